"""The distillation workflow end to end through the real CLI (tiny local model and noop).

The teacher is a kitchen RUN_DIR: a short, high-learning-rate SFT run of the same tiny
model, so it shares the student's tokenizer but not its weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import assert_completed, read_jsonl, run_kitchen, steps_of

FAST = ("eval_max_examples=3", "num_preview_samples=1", "max_tokens=12", "preview_max_tokens=8", "telemetry=jsonl")






@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher") / "sft"
    r = run_kitchen(
        "run", "recipe=sl_basic", "adapters=local", "model=tiny-llama", "max_steps=3", "learning_rate=3e-2",
        "eval_every=0", "save_every=0", "num_preview_samples=0", "max_length=128", "eval_max_examples=4", "batch_size=4",
        "telemetry=jsonl", f"run_dir={run_dir}",
    )
    assert r.code == 0, r
    assert (run_dir / "final" / "config.json").is_file()
    return run_dir


def test_on_policy_distillation_from_a_run_dir_teacher(teacher: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "distill"
    r = run_kitchen(
        "run", "recipe=distill_basic", "adapters=local", "model=tiny-llama", f"teacher={teacher}", "max_steps=2",
        f"run_dir={run_dir}", *FAST,
    )
    assert r.code == 0, r
    info = assert_completed(run_dir, 2)
    assert info["workflow"] == "distillation"
    rows = steps_of(run_dir)
    assert sorted(rows) == [1, 2]
    for row in rows.values():
        for key in ("teacher_kl", "entropy", "sampled_tokens", "loss"):
            assert isinstance(row.get(key), (int, float)) and math.isfinite(row[key]), (key, row)
        # importance_sampling with advantages -(student_lp - teacher_lp) at ratio 1: loss == teacher_kl
        assert row["loss"] == pytest.approx(row["teacher_kl"], rel=1e-3, abs=1e-4)
    # the teacher really differs from the student: the KL is not ~0
    assert abs(rows[1]["teacher_kl"]) > 1e-3
    evals = [row for row in read_jsonl(run_dir / "metrics.jsonl") if row.get("split") == "test"]
    assert [e["step"] for e in evals] == [0, 2]
    assert all("eval_teacher_kl" in e for e in evals)
    events = read_jsonl(run_dir / "events.jsonl")
    assert any(e["event"] == "sample.completion" and e["tag"] == "rollout" for e in events)


def test_off_policy_distillation_on_tiny(teacher: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "off"
    r = run_kitchen(
        "run", "recipe=distill_basic", "adapters=local", "model=tiny-llama", f"teacher={teacher}",
        "distill_mode=off_policy", "max_steps=1", "rollout_concurrency=1", f"run_dir={run_dir}", *FAST,
    )
    assert r.code == 0, r
    assert_completed(run_dir, 1)
    row = steps_of(run_dir)[1]
    assert row["teacher_tokens"] > 0 and math.isfinite(row["loss"]) and row["loss"] > 0  # a cross_entropy NLL


@pytest.mark.parametrize("mode", ["on_policy", "off_policy"])
def test_distillation_on_noop(mode: str, tmp_path: Path) -> None:
    run_dir = tmp_path / mode
    r = run_kitchen("run", "recipe=distill_basic", "adapters=noop", f"distill_mode={mode}", "max_steps=3",
                    "telemetry=jsonl", f"run_dir={run_dir}")
    assert r.code == 0, r
    assert_completed(run_dir, 3)
    rows = steps_of(run_dir)
    assert sorted(rows) == [1, 2, 3]
    key = "teacher_kl" if mode == "on_policy" else "teacher_tokens"
    assert all(key in row for row in rows.values())
