"""Sweeps that optimise (issue 10): objective=, launchers (joblib, submitit_local), Optuna, `kitchen runs --root`."""

from __future__ import annotations

import json
import re

import yaml

from conftest import run_kitchen

NOOP = ("recipe=sl_basic", "adapters=noop", "max_steps=4", "num_preview_samples=0")


def summary_rows(out: str) -> list[list[str]]:
    """The sweep summary table's body rows, split on rich's column bars."""
    rows = []
    for line in out.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0]:  # a wrapped cell continues on a line with an empty job column
                rows.append(cells)
    return rows


def final_metric(run_dir, key: str) -> float:
    return json.loads((run_dir / "run.json").read_text())["final_metrics"][key]


def test_joblib_sweep_in_parallel_sorted_by_objective_with_job_prefixes(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_kitchen("run", "-m", *NOOP, "telemetry=default", "learning_rate=1e-4,1e-3,3e-4", "objective=loss",
                    "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}")
    assert r.code == 0, r
    rows = summary_rows(r.out)
    assert [row[1] for row in rows] == ["learning_rate=0.001", "learning_rate=0.0003", "learning_rate=0.0001"]
    values = [float(row[4]) for row in rows]
    assert values == sorted(values)  # lower loss first
    best = sweep / rows[0][0]
    assert f"best: job {rows[0][0]} (learning_rate=0.001) loss" in r.out and str(best) in r.out
    assert abs(final_metric(best, "loss") - values[0]) < 1e-3
    for job in ("0", "1", "2"):  # every job's console lines carry its number
        assert re.search(rf"^\[job {job}\] step 4/4 ", r.out, re.M), r.out


def test_submitit_local_sweep_maximising(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_kitchen("run", "-m", *NOOP, "telemetry=jsonl", "learning_rate=1e-4,1e-3", "objective=test_nll",
                    "objective_mode=max", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                    f"hydra.sweep.dir={sweep}")
    assert r.code == 0, r
    rows = summary_rows(r.out)
    assert [row[1] for row in rows] == ["learning_rate=0.0001", "learning_rate=0.001"]  # higher test_nll first
    assert "test_nll (higher is better)" in r.out
    assert float(rows[0][4]) > float(rows[1][4])
    assert len(list(sweep.glob("*/run.json"))) == 2


def test_optuna_three_trials_records_a_failed_trial_and_keeps_going(tmp_path):
    sweep = tmp_path / "sweep"
    # seed 0 draws the second, first, second choice: the middle trial's loss becomes NaN at step 1
    # (a failure only running finds: a bad config value is refused by preflight before the sweep starts)
    r = run_kitchen("run", "-m", *NOOP, "telemetry=jsonl", "adapters.training.nan_at_step=choice(1,1000)",
                    "learning_rate=interval(1e-4,1e-3)",
                    "objective=loss", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
                    f"hydra.sweep.dir={sweep}")
    assert r.code == 1, r  # one job failed
    assert "Traceback" not in r.text and "float-castable" not in r.out
    rows = summary_rows(r.out)
    assert [row[2] for row in rows] == ["completed", "completed", "failed"]
    assert "nan_at_step=1" in rows[2][1] and "loss became" in r.out
    assert float(rows[0][4]) <= float(rows[1][4])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert abs(results["best_value"] - float(rows[0][4])) < 1e-3  # Optuna optimised the objective we returned


def test_optuna_direction_follows_objective_mode(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_kitchen("run", "-m", *NOOP, "telemetry=jsonl", "learning_rate=interval(1e-4,1e-3)", "objective=loss",
                    "objective_mode=max", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")
    assert r.code == 0, r
    rows = summary_rows(r.out)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [float(row[4]) for row in rows]
    assert len(set(values)) == 2 and abs(results["best_value"] - max(values)) < 1e-3  # Optuna maximised


def test_unknown_objective_fails_the_jobs_with_a_clear_message(tmp_path):
    r = run_kitchen("run", "-m", *NOOP, "telemetry=jsonl", "learning_rate=1e-4,3e-4", "objective=accuracy",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.code == 1, r
    assert "objective=accuracy is not a metric of this run" in r.out and "loss" in r.out
    assert "Traceback" not in r.text


def test_runs_root_finds_runs_anywhere_below_it(tmp_path):
    r = run_kitchen("run", "-m", *NOOP, "telemetry=jsonl", "learning_rate=1e-4,3e-4", f"hydra.sweep.dir={tmp_path / 'a' / 'b' / 'sweep'}")
    assert r.code == 0, r
    r = run_kitchen("run", *NOOP, "telemetry=jsonl", f"run_dir={tmp_path / 'single'}")
    assert r.code == 0, r
    r = run_kitchen("runs", "--root", str(tmp_path))
    assert r.code == 0, r
    for path in (tmp_path / "a" / "b" / "sweep" / "0", tmp_path / "a" / "b" / "sweep" / "1", tmp_path / "single"):
        assert str(path) in r.out, r.out
    assert r.out.count("completed") == 3
