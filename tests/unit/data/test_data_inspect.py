"""`kitchen data inspect`: format, statistics and coloured examples, without model weights."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from data_fixtures import alpaca_rows, answer, question, sharegpt_rows, write_jsonl


def test_inspect_shows_format_stats_and_trained_text(kitchen, tmp_path):
    rows = [{"messages": [
        {"role": "user", "content": question(i)},
        {"role": "assistant", "content": "Draft answer.", "weight": 0},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": answer(i)},
    ]} for i in range(5)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", alpaca_rows(3))
    r = kitchen("data", "inspect", "recipe=sl_basic", "model=tiny-llama", f"dataset={train}", f"test_dataset={test}",
                "-n", "2", "--color", "never")
    assert r.code == 0, r
    assert "dataset: 5 train rows, format messages (detected); 3 test rows, format alpaca (detected)" in r.out
    assert "no model weights loaded" in r.out
    # trained text between [[ ]]: only the final answer and its end-of-turn, never the question or the weight-0 draft
    assert f"[[{answer(0)}<|im_end|>]]" in r.out and f"[[{answer(1)}<|im_end|>]]" in r.out
    assert f"[[{question(0)}" not in r.out and "[[Draft answer." not in r.out and "Draft answer." in r.out
    assert r.out.count("[[") == 1 + 2  # the legend, then two examples with one trained run each
    (train_row,) = [line for line in r.out.splitlines() if line.strip().startswith("│ train")]
    trained = 5 * (len(answer(0)) + 1)
    assert [c.strip() for c in train_row.split("│")[1:8]] == ["train", "5", "5", "0", "0", train_row.split("│")[6].strip(), str(trained)]


def test_inspect_counts_truncated_and_emptied_examples(kitchen, tmp_path):
    train = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows(4))
    r = kitchen("data", "inspect", "recipe=sl_basic", "model=tiny-llama", f"dataset={train}", "~test_dataset", "max_length=30",
                "--color", "never", "-n", "0")
    assert r.code == 0, r
    (train_row,) = [line for line in r.out.splitlines() if line.strip().startswith("│ train")]
    cells = [c.strip() for c in train_row.split("│")[1:6]]
    assert cells == ["train", "4", "0", "4", "4"]  # rows, kept, truncated, empty: the answers were cut away


def test_inspect_colours_trained_tokens(kitchen, tmp_path):
    train = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows(2))
    r = kitchen("data", "inspect", "recipe=sl_basic", "model=tiny-llama", f"dataset={train}", "~test_dataset", "-n", "1",
                "--color", "always")
    assert r.code == 0, r
    green, dim = "\x1b[1;32m", "\x1b[2m"
    assert f"{green}{answer(0)}<|im_end|>" in r.out  # trained: bold green
    assert dim in r.out and f"{green}{question(0)}" not in r.out


def test_inspect_loads_no_model_weights(tmp_path, monkeypatch):
    """In-process, with every weight loader booby-trapped: inspect still works."""
    from kitchen.adapters.local import models, tiny
    from kitchen.cli.commands import app

    def trap(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(models, "load_model", trap)
    monkeypatch.setattr(tiny, "build_tiny_model", trap)
    monkeypatch.setattr(tiny, "build_tiny", trap)
    train = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows(3))
    result = CliRunner().invoke(app, ["data", "inspect", "recipe=sl_basic", "model=tiny-llama", f"dataset={train}",
                                      "~test_dataset", "--color", "never"])
    assert result.exit_code == 0, result.output
    assert "format sharegpt (detected)" in result.output


@pytest.mark.parametrize("args, needle", [
    (("dataset_format=alpaca",), "field instruction is missing"),
    (("dataset_split=x",), "dataset_split"),
])
def test_inspect_reports_bad_data_like_run(kitchen, tmp_path, args, needle):
    train = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows(2))
    r = kitchen("data", "inspect", "recipe=sl_basic", "model=tiny-llama", f"dataset={train}", "~test_dataset", *args)
    if needle == "dataset_split":  # a single local file is one split: the option is ignored, not an error
        assert r.code == 0, r
        return
    assert r.code == 2 and needle in r.err and "Traceback" not in r.err, r
