"""Weighted dataset mixtures (``dataset=[{path:..., weight:...}, ...]``) through the real `kitchen`
CLI on the tiny model: per-source format detection and column mapping, a killed and resumed
mixture equals an uninterrupted one, `kitchen data inspect` shows each source's share, a
streamed mixture and a DPO mixture train, sources of incompatible kinds are one exit-2 paragraph."""

from __future__ import annotations

import json
import signal

from conftest import dataset_line, read_jsonl, run_completed
from data_fixtures import messages_rows, prompt_completion_rows, sharegpt_rows, write_jsonl
from run_control import assert_same_run, start, wait_for_checkpoint

TINY = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "num_preview_samples=0", "telemetry=jsonl",
        "eval_max_examples=4", "batch_size=2")


def _dialogs(n: int) -> list[dict]:
    """sharegpt rows under another column name: only a per-source columns mapping reads them."""
    return [{"dialog": r["conversations"]} for r in sharegpt_rows(n)]


def _preference_rows(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."} for i in range(n)]


def test_mixture_with_per_source_columns_trains_and_inspect_shows_the_shares(kitchen, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", messages_rows(12))
    b = write_jsonl(tmp_path / "b.jsonl", _dialogs(6))
    mix = f"dataset=[{{path:{a},weight:0.7}},{{path:{b},weight:0.3,format:sharegpt,columns:{{conversations:dialog}}}}]"
    info = run_completed(kitchen, tmp_path / "r", *TINY, mix, "max_steps=2", "test_split_fraction=0.25", "seed=4")
    line = dataset_line(tmp_path / "r")
    assert "format mixture (interleave_over) of messages (detected) + sharegpt (dataset_format, conversations<-dialog)" in line
    assert "test rows (test_split_fraction=0.25" in line
    assert info["data_stats"]["test_data_stats"]["examples"] == 3 + 2  # a quarter of each source: 12 -> 3, 6 -> 2 (rounded)
    import yaml

    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["dataset"][1]["columns"] == {"conversations": "dialog"} and config["dataset"][0]["weight"] == 0.7

    r = kitchen("data", "inspect", *TINY, mix, "-n", "0", "--color", "never")
    assert r.code == 0, r
    assert "sources (interleave_over, seed 0)" in r.out and "weight" in r.out and "fraction" in r.out
    (row,) = [ln for ln in r.out.splitlines() if "messages (detected)" in ln and "│" in ln]
    cells = [c.strip() for c in row.split("│")]
    assert cells[3:6] == ["12", "0.7", cells[5]] and int(cells[5]) >= 12 and cells[6].endswith("%"), r.out


def test_mixture_killed_and_resumed_equals_uninterrupted(kitchen, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", messages_rows(20))
    b = write_jsonl(tmp_path / "b.jsonl", prompt_completion_rows(8))
    steps = 12
    args = (*TINY, f"dataset=[{{path:{a},weight:0.6}},{{path:{b},weight:0.4}}]", "dataset_mix=interleave_under",
            f"max_steps={steps}", "save_every=4", "lr_schedule=cosine", "warmup_steps=2", "lora_dropout=0.1", "seed=2")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_completed(kitchen, ref, *args)
    assert "mixture (interleave_under)" in dataset_line(ref)
    proc = start(*args, f"run_dir={killed}")
    saved = wait_for_checkpoint(killed, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 4 <= saved < steps
    r = kitchen("resume", str(killed))
    assert r.code == 0, r
    start_event = [e for e in read_jsonl(killed / "events.jsonl") if e["event"] == "workflow.start"][-1]
    assert start_event["resumed_from_step"] >= 4
    assert_same_run(killed, ref, steps)


def test_streamed_mixture_trains_and_resumes_from_its_position(kitchen, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", messages_rows(10))
    b = write_jsonl(tmp_path / "b.jsonl", prompt_completion_rows(6))
    mix = f"dataset=[{{path:{a},weight:0.5}},{{path:{b},weight:0.5}}]"
    run_completed(kitchen, tmp_path / "s", *TINY, mix, "dataset_streaming=true", "max_steps=10", "save_every=5",
                  "dataset_shuffle_buffer=4")
    line = dataset_line(tmp_path / "s")
    assert "train streamed from a mixture (interleave_over, seed 0)" in line and "prompt_completion (detected)" in line
    positions = [json.loads(x)["data_position"] for x in (tmp_path / "s" / "checkpoints" / "checkpoints.jsonl").read_text().splitlines()]
    assert positions[0]["rows"] >= 10  # five batches of two rows read from the interleaved stream
    # no weights and no dataset_mix: a stream cannot be concatenated and shuffled whole
    r = kitchen("validate", *TINY, f"dataset=[{a},{b}]", "dataset_streaming=true", "max_steps=3", f"run_dir={tmp_path / 'n'}")
    assert r.code == 2 and "dataset_mix" in r.err and "interleave_under" in r.err and "Traceback" not in r.err, r


def test_dpo_mixture_trains(kitchen, tmp_path):
    a = write_jsonl(tmp_path / "p1.jsonl", _preference_rows(8))
    b = write_jsonl(tmp_path / "p2.jsonl", [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]}
                                            for r in _preference_rows(4)])
    mix = f"dataset=[{{path:{a},weight:2}},{{path:{b},weight:1,columns:{{prompt:q,chosen:good,rejected:bad}}}}]"
    run_completed(kitchen, tmp_path / "d", "recipe=dpo_basic", "adapters=local", "model=tiny-llama", "batch_size=2",
                  "max_steps=2", "num_preview_samples=0", "telemetry=jsonl", "eval_max_examples=2", "max_length=64", mix)
    line = dataset_line(tmp_path / "d")
    assert "mixture (interleave_over) of preference (detected) + preference (detected, chosen<-good" in line


def test_incompatible_sources_are_one_paragraph_naming_both(kitchen, tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", messages_rows(4))
    pref = write_jsonl(tmp_path / "pref.jsonl", _preference_rows(4))
    r = kitchen("validate", *TINY, f"dataset=[{{path:{chat}}},{{path:{pref}}}]", f"run_dir={tmp_path / 'n'}")
    assert r.code == 2 and "Traceback" not in r.err, r
    assert "dataset[1] (" in r.err and "pref.jsonl" in r.err and "format preference (detected)" in r.err, r
    assert "dataset[0] (" in r.err and "chat.jsonl" in r.err and "format messages (detected)" in r.err, r
    assert len([ln for ln in r.err.strip().splitlines() if ln.startswith("error:")]) == 1, r
    for streaming in ((), ("dataset_streaming=true", "max_steps=2", "dataset_mix=interleave_under")):
        r = kitchen("validate", *TINY, f"dataset=[{{path:{pref}}},{{path:{chat}}}]", *streaming, f"run_dir={tmp_path / 'n'}")
        assert r.code == 2 and "dataset[0] (" in r.err and "preference" in r.err and "messages (detected)" in r.err, r


def _stream_plan(tmp_path, seed=0):
    from types import SimpleNamespace

    from kitchen.adapters.hf_datasets import HFDatasetStore
    from kitchen.adapters.local.tiny import build_tiny_tokenizer
    from kitchen.data.mixture import parse_sources
    from kitchen.data.stream import open_train_stream
    from kitchen.stages.session import make_renderer
    from kitchen.train.stream_batches import StreamPlan

    a = write_jsonl(tmp_path / "a.jsonl", messages_rows(9))
    b = write_jsonl(tmp_path / "b.jsonl", prompt_completion_rows(5))
    spec = SimpleNamespace(dataset=parse_sources([{"path": str(a), "weight": 0.7}, {"path": str(b), "weight": 0.3}]),
                           dataset_mix=None, dataset_split=None, dataset_subset=None, dataset_format="auto",
                           dataset_columns={}, seed=seed, dataset_shuffle_buffer=4, recipe="t", adapters=None,
                           train_on_what="last_assistant_message", renderer="auto", max_length=128)
    stream = open_train_stream(spec, HFDatasetStore(), "sft")
    return StreamPlan(stream.rows_for_epoch, make_renderer(spec, build_tiny_tokenizer()), 2, 12, stream.source)


def _walk(plan, step=0, position=None):
    return [b for e in plan.epochs_from(step, position) for b in plan.batches_in_epoch(e, step)]


def test_streamed_mixture_plan_resumes_with_the_same_batches(tmp_path):
    """The StreamPlan over an interleaved stream: a pure function of the seed, and restored from
    a checkpoint's position (epoch, rows read) it makes exactly the batches of the straight walk."""
    full = _walk(_stream_plan(tmp_path))
    assert len(full) == 12 and [b.items for b in _walk(_stream_plan(tmp_path))] == [b.items for b in full]
    assert [b.items for b in _walk(_stream_plan(tmp_path, seed=1))] != [b.items for b in full]
    for k in (1, 5, 9):
        resumed = _walk(_stream_plan(tmp_path), k, full[k - 1].position.to_dict())
        assert [(b.step, b.items) for b in resumed] == [(b.step, b.items) for b in full[k:]]


def test_distillation_reads_a_mixture(kitchen, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", messages_rows(6))
    b = write_jsonl(tmp_path / "b.jsonl", sharegpt_rows(4))
    run_completed(kitchen, tmp_path / "t", "recipe=distill_basic", "adapters=local", "model=tiny-llama", "teacher=tiny-llama",
                  "max_steps=1", "num_preview_samples=0", "telemetry=jsonl", f"dataset=[{{path:{a},weight:2}},{{path:{b},weight:1}}]")
    assert "format mixture (interleave_over) of messages (detected) + sharegpt (detected)" in dataset_line(tmp_path / "t")
    card = (tmp_path / "t" / "final" / "README.md")
    if card.exists():  # the model card names the mixture, not a Python list
        assert "a.jsonl (2) + " in card.read_text()
