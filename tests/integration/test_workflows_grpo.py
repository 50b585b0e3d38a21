"""The GRPO family's keys end to end through the real CLI: every variant on the tiny local model,
exact resume with dynamic sampling on noop, and the nonsensical combinations refused with exit 2."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import assert_completed, run_kitchen, steps_of

FAST = ("eval_max_examples=4", "num_preview_samples=1", "telemetry=jsonl")
TINY = ("recipe=rl_basic", "adapters=local", "model=tiny-llama", "max_tokens=8", *FAST)

VARIANTS = {
    "dr_grpo": ("loss=dr_grpo",),
    "dapo": ("loss=dapo", "overlong_buffer=4", "dynamic_sampling_max_rounds=1"),
    "gspo": ("loss=gspo",),
    "cispo": ("loss=cispo",),
    "grpo_k3_in_loss": ("loss=grpo", "kl_coef=0.04"),
    "rloo_token_mean_k2_reward": ("advantage=rloo", "aggregation=token_mean", "kl_coef=0.05", "kl_estimator=k2"),
    "reinforce_pp_filter": ("advantage=reinforce_pp", "overlong=filter", "loss_fn=ppo", "clip_high=0.28"),
    "sequence_is_k1_in_loss": ("importance_level=sequence", "kl_coef=0.05", "kl_in=loss"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_trains_on_the_tiny_model(tmp_path: Path, name: str) -> None:
    run_dir = tmp_path / name
    r = run_kitchen("run", *TINY, "max_steps=2", *VARIANTS[name], f"run_dir={run_dir}")
    assert r.code == 0, r
    assert_completed(run_dir, 2)
    rows = steps_of(run_dir)
    for row in rows.values():
        for key in ("loss", "reward_mean", "entropy", "sampled_tokens"):
            assert isinstance(row.get(key), (int, float)) and math.isfinite(row[key]), (name, key, row)
        if "is_ratio_mean" in row:  # the exact-gradient route: one forward at the weights the rollout used
            assert row["is_ratio_mean"] == pytest.approx(1.0, abs=0.05)
            assert "loss:sum" not in row  # the surrogate's own value is dropped
    assert any(math.isfinite(row.get("grad_norm", math.nan)) for row in rows.values())  # it trained at least once


def test_dynamic_sampling_refills_and_resumes_exactly(tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    common = ("recipe=rl_basic", "adapters=noop", "loss=dapo", *FAST)
    assert run_kitchen("run", *common, "max_steps=4", f"run_dir={full}").code == 0
    assert run_kitchen("run", *common, "max_steps=2", f"run_dir={split}").code == 0
    r = run_kitchen("run", *common, "max_steps=4", "resume=true", f"run_dir={split}")
    assert r.code == 0, r
    a, b = steps_of(full), steps_of(split)
    for step in (3, 4):
        for key in ("reward_mean", "loss", "dynamic_sampling_rounds", "groups_trained", "num_datums"):
            assert a[step][key] == pytest.approx(b[step][key]), (step, key)
    assert any(row["dynamic_sampling_rounds"] > 0 for row in a.values())  # noop rewards tie often: it refilled
    assert all(row["groups_trained"] <= 4 for row in a.values())


@pytest.mark.parametrize(("overrides", "needles"), [
    (("loss_fn=cispo", "importance_level=sequence"), ("importance_level=sequence", "cispo", "GSPO")),
    (("kl_in=loss",), ("kl_coef",)),
    (("loss=dapo", "clip_high=0.5"), ("loss=dapo", "clip_high")),
    (("loss=simpo",), ("preference",)),
    (("clip_high=0.28",), ("importance_sampling",)),
    (("advantage=rloo", "group_size=1"), ("group_size",)),
    (("advantage=mean",), ("advantage", "group_mean")),
])
def test_nonsense_is_exit_2_in_one_paragraph(tmp_path: Path, overrides, needles) -> None:
    for command in ("validate", "run"):
        r = run_kitchen(command, "recipe=rl_basic", "adapters=noop", *overrides, f"run_dir={tmp_path / command}")
        assert r.code == 2, r
        assert "Traceback" not in r.text
        for needle in needles:
            assert needle in r.text, (needle, r.text)


def test_an_rl_key_on_another_workflow_names_reinforcement(tmp_path: Path) -> None:
    r = run_kitchen("validate", "recipe=distill_basic", "adapters=noop", "advantage=rloo", f"run_dir={tmp_path / 'x'}")
    assert r.code == 2, r
    assert "reinforcement" in r.text and "advantage" in r.text
