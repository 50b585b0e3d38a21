"""`dataset_streaming=true` through the real `kitchen` CLI on the tiny model: a local JSONL
stream killed and resumed equals an uninterrupted streamed run; a hub dataset streams
offline from a huggingface_hub cache the test writes; what cannot stream is an exit-2
paragraph naming the key, in `kitchen validate` too; `kitchen data inspect` shows the
stream's first rows."""

from __future__ import annotations

import json
import signal

from conftest import dataset_line, read_jsonl, run_completed
from data_fixtures import make_hub_cache, messages_rows, prompt_completion_rows, sharegpt_rows, write_jsonl
from run_control import assert_same_run, start, wait_for_checkpoint

TINY = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "num_preview_samples=0", "telemetry=jsonl",
        "eval_max_examples=4", "dataset_streaming=true")


def test_streamed_jsonl_killed_and_resumed_equals_uninterrupted(kitchen, tmp_path):
    """30 rows, batches of 4: 7 batches a pass, so 16 steps cross two epoch boundaries and the
    resume starts mid-epoch; only a stream restored at the checkpointed row gives the same losses."""
    data = write_jsonl(tmp_path / "rows.jsonl", messages_rows(30))
    steps = 16
    args = (*TINY, f"dataset={data}", "~test_dataset", "batch_size=4", "dataset_shuffle_buffer=8", f"max_steps={steps}",
            "save_every=5", "lr_schedule=cosine", "warmup_steps=3", "lora_dropout=0.1")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    info = run_completed(kitchen, ref, *args)
    line = dataset_line(ref)
    assert f"train streamed from {data}" in line and "format messages (detected)" in line
    stats = info["data_stats"]["train_data_stats"]
    assert stats["kept"] == stats["examples"] == 30 + 30 + 2 * 4  # two whole passes, then two batches of the third
    positions = [json.loads(x)["data_position"] for x in (ref / "checkpoints" / "checkpoints.jsonl").read_text().splitlines()]
    assert positions[0] == {"epoch": 0, "rows": 20, "batches": 5} and positions[-1] == {"epoch": 2, "rows": 8, "batches": 2}

    proc = start(*args, f"run_dir={killed}")
    saved = wait_for_checkpoint(killed, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 5 <= saved < steps
    r = kitchen("resume", str(killed))
    assert r.code == 0, r
    start_event = [e for e in read_jsonl(killed / "events.jsonl") if e["event"] == "workflow.start"][-1]
    assert start_event["resumed_from_step"] >= 5
    assert_same_run(killed, ref, steps)


README = """---
configs:
- config_name: sharegpt
  data_files:
  - split: train
    path: sharegpt/train.jsonl
  - split: test
    path: sharegpt/test.jsonl
dataset_info:
- config_name: sharegpt
  splits:
  - name: train
    num_examples: 9
  - name: test
    num_examples: 2
---
# tiny chat
"""


def test_hub_dataset_streams_offline_from_the_hub_cache(kitchen, tmp_path):
    hf_home = tmp_path / "hf"
    make_hub_cache(hf_home, "kitchen-test/stream-chat", {
        "README.md": README,
        "sharegpt/train.jsonl": "".join(json.dumps(r) + "\n" for r in sharegpt_rows(9)),
        "sharegpt/test.jsonl": "".join(json.dumps(r) + "\n" for r in sharegpt_rows(2)),
    })
    env = {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "ds-cache"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    hub = ("dataset=kitchen-test/stream-chat", "dataset_subset=sharegpt", "test_dataset=kitchen-test/stream-chat",
           "test_dataset_subset=sharegpt", "test_dataset_split=test")
    info = run_completed(kitchen, tmp_path / "r", *TINY, *hub, "batch_size=2", "max_steps=6", env=env)
    line = dataset_line(tmp_path / "r")
    assert "train streamed from kitchen-test/stream-chat (9 rows per its metadata" in line, line
    assert "format sharegpt (detected); 2 test rows" in line
    assert info["data_stats"]["train_data_stats"]["examples"] == 9 + 4  # a pass: 4 batches of 2, the 9th row read and left over
    assert info["data_stats"]["test_data_stats"]["examples"] == 2
    # `kitchen data inspect` reads the stream's first rows only, and says so
    r = kitchen("data", "inspect", *TINY, *hub, "max_steps=6", "--examples", "1", "--color", "never", env=env)
    assert r.code == 0, r
    assert "train streamed from kitchen-test/stream-chat" in r.out and "its first 9" in r.out, r


def test_parquet_shards_and_save_to_disk_open_as_streams(kitchen, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    rows = prompt_completion_rows(6)
    pq.write_table(pa.Table.from_pylist(rows[:3]), shards / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), shards / "part-00001.parquet")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"sft": datasets.Dataset.from_list(sharegpt_rows(5))}).save_to_disk(str(saved))
    common = (*TINY, "~test_dataset", "max_steps=3", f"run_dir={tmp_path / 'n'}")
    r = kitchen("validate", *common, f"dataset={shards}")
    assert r.code == 0 and f"train streamed from {shards}" in r.out and "format prompt_completion (detected)" in r.out, r
    r = kitchen("validate", *common, f"dataset={saved}", "dataset_split=sft")
    assert r.code == 0 and f"train streamed from {saved}" in r.out and "format sharegpt (detected)" in r.out, r
    r = kitchen("validate", *common, f"dataset={saved}", "dataset_split=train")
    assert r.code == 2 and "no split 'train'" in r.err and "sft" in r.err, r


def test_what_cannot_stream_is_a_clear_exit_2(kitchen, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", messages_rows(6))
    common = (*TINY, f"dataset={data}", "~test_dataset", f"run_dir={tmp_path / 'n'}")
    cases = {
        ("max_steps=null",): "needs max_steps=N",
        ("max_steps=5", "test_split_fraction=0.25"): "test_split_fraction=0.25",
        ("max_steps=5", "length_grouped=true"): "length_grouped=true",
        ("max_steps=5", "recipe=dpo_basic"): "not supported by the preference workflow",
        ("max_steps=5", "recipe=distill_basic"): "not supported by the distillation workflow",
    }
    for extra, expected in cases.items():
        r = kitchen("validate", *common, *extra)
        assert r.code == 2 and expected in r.err and "Traceback" not in r.err, (extra, r)
    # a row that breaks the detected format among the first rows: caught by validate, naming row and field
    bad = write_jsonl(tmp_path / "bad.jsonl", [*messages_rows(3), {"messages": [{"role": "user"}]}])
    r = kitchen("validate", *TINY, f"dataset={bad}", "~test_dataset", "max_steps=5", f"run_dir={tmp_path / 'n'}")
    assert r.code == 2 and f"{bad}: line 4 does not fit" in r.err and "content" in r.err and "Traceback" not in r.err, r


def test_a_bad_row_deep_in_the_stream_stops_the_run_naming_it(kitchen, tmp_path):
    rows = messages_rows(80)
    rows[70] = {"messages": "not a list"}  # past the rows validate reads
    data = write_jsonl(tmp_path / "late.jsonl", rows)
    run = tmp_path / "r"
    r = kitchen("run", *TINY, f"dataset={data}", "~test_dataset", "batch_size=16", "max_steps=5", f"run_dir={run}")
    assert r.code == 2, r
    assert f"{data}: line 71 does not fit the messages format: field messages" in r.err, r
    assert "Traceback" not in r.err


# -- the streamed batch plan itself (no CLI, no model: the tiny tokenizer and a real stream) --------


def _plan(tmp_path, rows, batch_size=4, max_steps=10, seed=0):
    from types import SimpleNamespace

    from kitchen.adapters.hf_datasets import HFDatasetStore
    from kitchen.adapters.local.tiny import build_tiny_tokenizer
    from kitchen.data.stream import open_train_stream
    from kitchen.stages.session import make_renderer
    from kitchen.train.stream_batches import StreamPlan

    data = write_jsonl(tmp_path / f"rows{len(rows)}.jsonl", rows)
    spec = SimpleNamespace(dataset=str(data), dataset_split=None, dataset_subset=None, dataset_format="auto",
                           dataset_columns={}, seed=seed, dataset_shuffle_buffer=8, recipe="t", adapters=None,
                           train_on_what="last_assistant_message", renderer="auto", max_length=128)
    stream = open_train_stream(spec, HFDatasetStore())
    return StreamPlan(stream.rows_for_epoch, make_renderer(spec, build_tiny_tokenizer()), batch_size, max_steps, str(data))


def _walk(plan, step=0, position=None):
    return [b for e in plan.epochs_from(step, position) for b in plan.batches_in_epoch(e, step)]


def test_stream_plan_resumes_from_a_position_or_by_replay_with_the_same_batches(tmp_path):
    rows = messages_rows(10)
    full = _walk(_plan(tmp_path, rows))
    assert [b.step for b in full] == list(range(10)) and [b.epoch for b in full] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert full[0].items != full[2].items  # a new shuffle each epoch (seed + epoch)
    assert [b.items for b in _walk(_plan(tmp_path, rows))] == [b.items for b in full]  # a pure function of the seed
    assert [b.items for b in _walk(_plan(tmp_path, rows, seed=1))] != [b.items for b in full]
    for k in (1, 2, 5):
        resumed = _walk(_plan(tmp_path, rows), k, full[k - 1].position.to_dict())
        assert [(b.step, b.items) for b in resumed] == [(b.step, b.items) for b in full[k:]]
        replayed = _walk(_plan(tmp_path, rows), k, None)  # a checkpoint that recorded no position
        assert [(b.step, b.items) for b in replayed] == [(b.step, b.items) for b in full[k:]]


def test_stream_plan_refuses_a_pass_shorter_than_one_batch(tmp_path):
    import pytest

    from kitchen.errors import DataError

    with pytest.raises(DataError, match="fewer than batch_size=4 trainable examples"):
        _walk(_plan(tmp_path, messages_rows(3)))
