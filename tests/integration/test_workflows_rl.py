"""The reinforcement workflow end to end through the real CLI (tiny local model and noop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_completed, evals_of, read_jsonl, run_kitchen, steps_of
from kitchen.runs.rundir import RunDir

RL_STEP_METRICS = ("reward_mean", "accuracy", "entropy", "sampled_tokens", "reward_std", "frac_degenerate_groups")
FAST = ("eval_max_examples=4", "num_preview_samples=1", "telemetry=jsonl")








def test_rl_basic_on_tiny_local_model_ppo_with_kl(tmp_path: Path) -> None:
    run_dir = tmp_path / "rl"
    r = run_kitchen(
        "run", "recipe=rl_basic", "adapters=local", "model=tiny-llama", "max_steps=2", "max_tokens=8",
        "loss_fn=ppo", "kl_coef=0.05", "save_every=1", f"run_dir={run_dir}", *FAST,
    )
    assert r.code == 0, r
    info = assert_completed(run_dir, 2)
    assert info["workflow"] == "reinforcement"
    rows = steps_of(run_dir)
    assert sorted(rows) == [1, 2]
    for row in rows.values():
        for key in RL_STEP_METRICS + ("kl_ref", "loss", "lr"):
            assert isinstance(row.get(key), (int, float)), (key, row)
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["sampled_tokens"] > 0
        assert row["num_samples"] == 16  # groups_per_batch 4 x group_size 4
    evals = evals_of(run_dir)
    assert [e["step"] for e in evals] == [0, 2]  # before / after
    assert all(0.0 <= e["eval_accuracy"] <= 1.0 for e in evals)
    events = read_jsonl(run_dir / "events.jsonl")
    rollouts = [e for e in events if e["event"] == "sample.completion" and e["tag"] == "rollout"]
    assert rollouts and all("reward" in e and e["step"] in (1, 2) for e in rollouts)
    assert len(rollouts) <= 2  # a few per step (num_preview_samples), not all 16
    tags = {e["tag"] for e in events if e["event"] == "sample.completion"}
    assert {"before", "after", "rollout"} <= tags
    assert [c["step"] for c in RunDir(run_dir).list_checkpoints()] == [1, 2]  # save_every=1


def test_rl_noop_resume_is_exact(tmp_path: Path) -> None:
    """Prompts and sampler seeds are functions of (seed, step): 2 steps + resume == 4 steps."""
    full, split = tmp_path / "full", tmp_path / "split"
    common = ("recipe=rl_basic", "adapters=noop", *FAST)
    assert run_kitchen("run", *common, "max_steps=4", f"run_dir={full}").code == 0
    assert run_kitchen("run", *common, "max_steps=2", f"run_dir={split}").code == 0
    r = run_kitchen("run", *common, "max_steps=4", "resume=true", f"run_dir={split}")
    assert r.code == 0, r
    assert_completed(split, 4)
    a, b = steps_of(full), steps_of(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("reward_mean", "sampled_tokens", "entropy", "loss"):
            assert a[step][key] == pytest.approx(b[step][key]), (step, key)


def test_rl_requires_max_steps(tmp_path: Path) -> None:
    r = run_kitchen("run", "recipe=rl_basic", "adapters=noop", "~max_steps", f"run_dir={tmp_path / 'x'}")
    assert r.code == 2, r
    assert "max_steps" in r.text


def test_describe_shows_the_rollout_lanes() -> None:
    r = run_kitchen("describe", "rl_basic")
    assert r.code == 0, r
    for text in ("rollout In rollout_concurrency parallel lanes", "rl_step", "forward_backward + optim_step", "evaluate (tag=after)"):
        assert text in r.out
    assert "lane 1/" not in r.out and "branch 1" not in r.out  # one stage, lanes sized from the spec when it runs
