"""The real `kitchen` CLI, through a subprocess, with real Hydra composition (noop backend)."""

from __future__ import annotations

import json

from conftest import read_jsonl, step_losses

NOOP = ("adapters=noop", "telemetry=jsonl")


def test_run_end_to_end_writes_the_run_dir(kitchen, tmp_path):
    run_dir = tmp_path / "x"
    r = kitchen("run", "recipe=sl_basic", "adapters=noop", "learning_rate=3e-4", "max_steps=20", f"run_dir={run_dir}")
    assert r.code == 0, r
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["step"] == 20 and info["seed"] == 0
    assert info["versions"]["python"] and "hydra-core" in info["versions"]
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, 21))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    events = {e["event"] for e in read_jsonl(run_dir / "events.jsonl")}
    assert {"workflow.start", "workflow.stop", "stage.start", "training.step", "training.checkpoint", "eval.result"} <= events
    config = (run_dir / "config.yaml").read_text()
    assert "learning_rate: 0.0003" in config and "recipe: sl_basic" in config
    assert (run_dir / "checkpoints" / "checkpoints.jsonl").exists()
    assert (run_dir / "final").is_dir()
    # the console sink printed progress and a summary (stdout is not a TTY here)
    assert "step 20/20" in r.out and "completed" in r.out


def test_hydra_override_grammar(kitchen, tmp_path):
    run_dir = tmp_path / "g"
    r = kitchen("run", *NOOP, "max_steps=3", "~test_dataset", "hydra.job.name=custom", f"run_dir={run_dir}")
    assert r.code == 0, r
    config = (run_dir / "config.yaml").read_text()
    assert "test_dataset: null" in config
    events = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "eval.result"]
    assert events == []  # no test set, no evaluation


def test_cfg_prints_spec_and_plan_and_runs_nothing(kitchen, tmp_path):
    run_dir = tmp_path / "never"
    r = kitchen("run", "recipe=sl_basic", "adapters=noop", "lora_rank=8", f"run_dir={run_dir}", "--cfg")
    assert r.code == 0, r
    assert "lora_rank: 8" in r.out and "forward_backward" in r.out and "loop epoch" in r.out
    assert not run_dir.exists()


def test_recipes_table(kitchen):
    r = kitchen("recipes")
    assert r.code == 0, r
    assert "sl_basic" in r.out and "supervised" in r.out and "local" in r.out


def test_describe_shows_types_defaults_and_stage_tree(kitchen):
    r = kitchen("describe", "sl_basic")
    assert r.code == 0, r
    for text in ("learning_rate", "float", "batch_size", "int", "save_weights", "loop batch"):
        assert text in r.out


def test_validate_ok_and_runs_nothing(kitchen, tmp_path):
    run_dir = tmp_path / "v"
    r = kitchen("validate", "adapters=noop", f"run_dir={run_dir}")
    assert r.code == 0, r
    assert "ok" in r.out and "300 rows" in r.out.replace(",", "") or "rows" in r.out
    assert not (run_dir / "run.json").exists()


def test_runs_lists_past_runs(kitchen, tmp_path):
    kitchen("run", *NOOP, "max_steps=4", f"run_dir={tmp_path / 'runs' / 'a'}")
    r = kitchen("runs", str(tmp_path / "runs"))
    assert r.code == 0, r
    assert "sl_basic" in r.out and "completed" in r.out and "4/4" in r.out


def test_runs_shows_the_time_of_every_attempt(kitchen, tmp_path):
    """A resumed run's duration is all its attempts', not the last one's (which duration_s keeps)."""
    run = tmp_path / "runs" / "a"
    assert kitchen("run", *NOOP, "max_steps=2", "save_every=2", f"run_dir={run}").code == 0
    assert kitchen("resume", str(run), "max_steps=4").code == 0
    info = json.loads((run / "run.json").read_text())
    first, second = info["attempts"]
    first["ended_at"] = first["started_at"] + 190  # pretend the attempts took 3:10 and 0:29
    second["ended_at"] = second["started_at"] + 29
    info["duration_s"] = 29
    (run / "run.json").write_text(json.dumps(info))
    r = kitchen("runs", str(tmp_path / "runs"))
    assert r.code == 0 and "3:39 (2 attempts)" in r.out, r


def test_user_recipe_dir_by_option_and_env(kitchen, tmp_path):
    mine = tmp_path / "my_recipes"
    mine.mkdir()
    (mine / "tiny_sft.yaml").write_text(
        "# @package _global_\n# my own recipe\ndefaults:\n  - override /adapters: noop\n"
        "description: A user recipe.\nmax_steps: 2\nlearning_rate: 1e-3\n"
        "dataset: ${kitchen_data:chat_sft/train.jsonl}\n"
    )
    r = kitchen("recipes", "--recipes-dir", str(mine))
    assert "tiny_sft" in r.out and "A user recipe." in r.out, r
    r = kitchen("run", "recipe=tiny_sft", "telemetry=jsonl", f"run_dir={tmp_path / 'u'}", env={"KITCHEN_RECIPES_PATH": str(mine)})
    assert r.code == 0, r
    assert json.loads((tmp_path / "u" / "run.json").read_text())["adapters"] == "noop"


def test_multirun_sweeps_and_summarises(kitchen, tmp_path):
    sweep = tmp_path / "sweep"
    r = kitchen("run", "-m", "recipe=sl_basic", *NOOP, "max_steps=5", "learning_rate=1e-4,3e-4", "lora_rank=8,16",
                f"hydra.sweep.dir={sweep}")
    assert r.code == 0, r
    runs = sorted(p.parent for p in sweep.glob("*/run.json"))
    assert len(runs) == 4
    infos = [json.loads((p / "run.json").read_text()) for p in runs]
    assert all(i["status"] == "completed" for i in infos)
    assert "sweep summary" in r.out and "learning_rate=0.0003" in r.out.replace("3e-4", "0.0003") or "learning_rate=3e-4" in r.out
    # a higher learning rate lowers the noop loss faster: the sweep really varied it
    final = {json.loads((p / "config.yaml").read_text().split("learning_rate: ")[1].split()[0]): step_losses(p)[5] for p in runs}
    assert final[0.0003] < final[0.0001]


def test_multirun_failed_job_does_not_stop_the_others(kitchen, tmp_path):
    """Job 0 diverges at step 2 (a failure no preflight can see); job 1 still runs to the end."""
    sweep = tmp_path / "sweep"
    r = kitchen("run", "-m", *NOOP, "max_steps=3", "adapters.training.nan_at_step=2,1000", f"hydra.sweep.dir={sweep}")
    assert r.code == 1, r
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/run.json"))
    assert statuses == ["completed", "failed"]
    assert "failed" in r.out and "loss became" in r.out


def test_resume_continues_from_last_checkpoint(kitchen, tmp_path):
    run_dir = tmp_path / "r"
    const = ("lr_schedule=constant", "warmup_steps=0", "save_every=5")  # schedule independent of max_steps
    r = kitchen("run", *NOOP, *const, "max_steps=10", f"run_dir={run_dir}")
    assert r.code == 0, r
    r = kitchen("run", *NOOP, *const, "max_steps=16", f"run_dir={run_dir}", "resume=true")
    assert r.code == 0, r
    info = json.loads((run_dir / "run.json").read_text())
    assert info["step"] == 16 and info["status"] == "completed"
    resumed = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "workflow.start"]
    assert resumed[-1]["resumed_from_step"] == 10
    # same data order and state as one uninterrupted 16-step run with the same schedule
    ref = tmp_path / "ref"
    kitchen("run", *NOOP, *const, "max_steps=16", f"run_dir={ref}")
    assert step_losses(run_dir) == step_losses(ref)


def test_kitchen_resume_command(kitchen, tmp_path):
    run_dir = tmp_path / "k"
    assert kitchen("run", *NOOP, "max_steps=4", "save_every=2", f"run_dir={run_dir}").code == 0
    r = kitchen("resume", str(run_dir), "max_steps=6")
    assert r.code == 0, r
    assert json.loads((run_dir / "run.json").read_text())["step"] == 6


def test_help_is_fast_and_lists_commands(kitchen):
    r = kitchen("--help")
    assert r.code == 0
    for cmd in ("run", "recipes", "describe", "validate", "runs", "resume", "serve"):
        assert cmd in r.out


def test_kitchen_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, kitchen.cli.commands, kitchen.cli.views, kitchen.config.compose, kitchen.runs.execute; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_read_only_commands_never_import_torch(tmp_path):
    import subprocess
    import sys

    for args in (["recipes"], ["describe", "sl_basic"], ["validate", "adapters=noop", f"run_dir={tmp_path / 'v'}"],
                 ["run", "--cfg"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kitchen.cli", *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert "torch" not in imported, args


def test_shell_completion_script(kitchen):
    # Typer's own switch for naming the shell instead of detecting the parent process (make runs sh)
    r = kitchen("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert r.code == 0, r
    assert "kitchen" in r.out and "complete" in r.out
