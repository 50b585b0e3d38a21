"""Multi-turn episodes through the real CLI: turns and episode tokens per step, exact resume,
env failures that stop the run with one paragraph, and bad tool config caught by validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, assert_completed, read_jsonl, run_kitchen, steps_of

SUPPORT = {"PYTHONPATH": str(REPO / "tests" / "support")}
FAST = ("eval_max_examples=4", "num_preview_samples=1", "telemetry=jsonl")
TALK = ("recipe=rl_basic", "env={_target_: episode_envs.TalkSource, turns: 3}", "max_tokens=6", *FAST)


def test_multi_turn_env_on_tiny_local_model_logs_turns(tmp_path: Path) -> None:
    run_dir = tmp_path / "talk"
    r = run_kitchen("run", *TALK, "adapters=local", "model=tiny-llama", "max_steps=2", "kl_coef=0.05", "loss_fn=ppo",
                    f"run_dir={run_dir}", env=SUPPORT)
    assert r.code == 0, r
    assert_completed(run_dir, 2)
    for row in steps_of(run_dir).values():
        assert row["turns"] == 3.0, row
        assert row["episode_tokens"] > row["sampled_tokens_mean"] > 0
        assert row["num_samples"] == 16 and row["episode_errors"] == 0
        assert "env/reply_chars" in row and "kl_ref" in row and row["turns_per_s"] > 0


def test_multi_turn_resume_is_exact(tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    common = (*TALK, "adapters=noop", "save_every=2")
    assert run_kitchen("run", *common, "max_steps=4", f"run_dir={full}", env=SUPPORT).code == 0
    assert run_kitchen("run", *common, "max_steps=2", f"run_dir={split}", env=SUPPORT).code == 0
    r = run_kitchen("run", *common, "max_steps=4", "resume=true", f"run_dir={split}", env=SUPPORT)
    assert r.code == 0, r
    a, b = steps_of(full), steps_of(split)
    for step in (3, 4):
        for key in ("reward_mean", "sampled_tokens", "entropy", "loss", "turns", "episode_tokens"):
            assert a[step][key] == b[step][key], (step, key)


def test_an_env_that_keeps_raising_stops_the_run_naming_it(tmp_path: Path) -> None:
    r = run_kitchen("run", "recipe=rl_basic", "env={_target_: episode_envs.TalkSource, turns: 3, fail_at: 2}",
                    "adapters=noop", "max_steps=3", "max_env_failures=5", f"run_dir={tmp_path / 'x'}", *FAST, env=SUPPORT)
    assert r.code != 0, r
    assert "Traceback" not in r.err
    assert "env 'talk' failed 5 episodes in a row" in r.text and "talk env broke on purpose" in r.text, r.text


@pytest.mark.parametrize("override, expected", [
    ("env={_target_: kitchen.envs.calculator.CalculatorEnv, tools: [calculater]}", "Did you mean 'calculator'"),
    ("env=calculater", "Did you mean 'calculator'"),
    ("env={_target_: kitchen.envs.calculator.CalculatorEnv, ops: ['/']}", "ops must be"),
])
def test_validate_catches_bad_env_and_tool_config(tmp_path: Path, override: str, expected: str) -> None:
    r = run_kitchen("validate", "recipe=rl_basic", "adapters=noop", override, f"run_dir={tmp_path / 'v'}")
    assert r.code == 2, r
    assert expected in r.text, r.text
    assert not (tmp_path / "v").exists()


def test_calculator_env_runs_on_tiny_local_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "calc"
    r = run_kitchen("run", "recipe=rl_basic", "adapters=local", "model=tiny-llama", "env=calculator", "max_steps=1",
                    "max_tokens=8", "max_turns=2", f"run_dir={run_dir}", *FAST)
    assert r.code == 0, r
    row = steps_of(run_dir)[1]
    assert row["turns"] >= 1.0 and row["episode_tokens"] > 0
    evals = [e for e in read_jsonl(run_dir / "metrics.jsonl") if e.get("split") == "test"]
    assert [e["step"] for e in evals] == [0, 1] and all("eval_turns" in e for e in evals)  # greedy episodes


def test_multi_turn_over_kitchen_serve_matches_local(tmp_path: Path) -> None:
    """The same episodes through the tinker SDK against `kitchen serve`: equal rewards and losses."""
    from kitchen.serve.testing import serve_subprocess

    key = "tml-kitchen-test-secret-episodes"
    local, remote = tmp_path / "local", tmp_path / "serve"
    common = (*TALK, "model=tiny-llama", "max_steps=2", "groups_per_batch=2")
    assert run_kitchen("run", *common, "adapters=local", f"run_dir={local}", env=SUPPORT).code == 0
    with serve_subprocess(key, backend="local") as server:
        r = run_kitchen("run", *common, "adapters=tinker", f"run_dir={remote}",
                        env={**SUPPORT, "TINKER_BASE_URL": server.base_url, "TINKER_API_KEY": key})
    assert r.code == 0, r
    a, b = steps_of(local), steps_of(remote)
    for step in (1, 2):
        assert a[step]["turns"] == b[step]["turns"] == 3.0
        assert a[step]["reward_mean"] == b[step]["reward_mean"]
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4, abs=1e-6)
