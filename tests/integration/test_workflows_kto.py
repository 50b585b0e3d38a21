"""The kto workflow end to end through the real CLI (tiny local model, fp32) and on noop."""

from __future__ import annotations

import math
from pathlib import Path

from conftest import assert_completed, evals_of, run_kitchen, steps_of

TINY = ("recipe=kto_basic", "adapters=local", "model=tiny-llama", "precision=fp32", "learning_rate=1e-2",
        "batch_size=4", "eval_max_examples=8", "num_preview_samples=0", "telemetry=jsonl", "max_length=128")


def test_kto_basic_trains_and_logs_kto_metrics(tmp_path: Path) -> None:
    run_dir = tmp_path / "kto"
    r = run_kitchen("run", *TINY, "max_steps=4", f"run_dir={run_dir}")
    assert r.code == 0, r
    assert_completed(run_dir, 4)
    rows = steps_of(run_dir)
    assert sorted(rows) == [1, 2, 3, 4]
    for row in rows.values():
        for key in ("kto_loss", "kto_kl", "desirable_reward", "undesirable_reward", "policy_logp", "ref_logp"):
            assert math.isfinite(row[key]), (key, row)
        assert row["loss"] == row["kto_loss"] and "loss:mean" not in row
        assert row["kto_kl"] >= 0.0
    # step 1: policy == reference, so r = 0, z0 = 0 and every example's loss is 1 - sigmoid(0) = 0.5
    assert abs(rows[1]["kto_loss"] - 0.5) < 1e-4
    assert abs(rows[4]["policy_logp"] - rows[4]["ref_logp"]) > 1e-3  # it moved
    evals = evals_of(run_dir)
    assert [e["step"] for e in evals] == [0, 4] and all(math.isfinite(e["eval_kto_loss"]) for e in evals)


def test_kto_on_noop_and_unpaired_detection(tmp_path: Path) -> None:
    r = run_kitchen("run", "recipe=kto_basic", "adapters=noop", "max_steps=2", "telemetry=jsonl", f"run_dir={tmp_path / 'n'}")
    assert r.code == 0, r
    events = (tmp_path / "n" / "events.jsonl").read_text()
    assert "format unpaired (detected)" in events
    assert sorted(steps_of(tmp_path / "n")) == [1, 2]


def test_kto_row_without_a_boolean_label_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "yo", "label": "maybe"}\n')
    r = run_kitchen("run", "recipe=kto_basic", "adapters=noop", f"dataset={bad}", "~test_dataset", f"run_dir={tmp_path / 'b'}")
    assert r.code == 2 and "Traceback" not in r.text, r
    assert "label" in r.err and "true (desirable) or false" in r.err, r
