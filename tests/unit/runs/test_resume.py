"""Checkpoint and resume, exact: SIGKILL, Ctrl-C and NaN on real runs through the CLI."""

from __future__ import annotations

import json
import signal
import time

from conftest import read_jsonl
from run_control import assert_same_run, start, wait_for_checkpoint

TINY = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "batch_size=4", "~test_dataset", "num_preview_samples=0",
        "telemetry=jsonl", "lr_schedule=cosine", "warmup_steps=3", "lora_dropout=0.1")


def test_sigkill_after_a_checkpoint_then_resume_equals_uninterrupted(kitchen, tmp_path):
    steps = 40
    run_dir, ref = tmp_path / "killed", tmp_path / "ref"
    proc = start(*TINY, f"max_steps={steps}", "save_every=5", f"run_dir={run_dir}")
    saved = wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "running"  # killed: nothing had a chance to record an ending
    assert 5 <= saved < steps
    listing = kitchen("runs", str(run_dir))
    assert "killed" in listing.out, listing
    r = kitchen("run", *TINY, f"max_steps={steps}", "save_every=5", f"run_dir={run_dir}", "resume=true")
    assert r.code == 0, r
    start_event = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "workflow.start"][-1]
    assert start_event["resumed_from_step"] >= saved
    # no batch seen twice, no optimizer step applied twice: the resumed run equals an uninterrupted one
    assert kitchen("run", *TINY, f"max_steps={steps}", "save_every=5", f"run_dir={ref}").code == 0
    assert_same_run(run_dir, ref, steps)


def test_ctrl_c_checkpoints_and_resume_finishes(kitchen, tmp_path):
    steps = 60
    run_dir = tmp_path / "interrupted"
    proc = start(*TINY, f"max_steps={steps}", "save_every=1000", "eval_every=0", f"run_dir={run_dir}")
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and 0 < info["step"] < steps
    last = json.loads((run_dir / "checkpoints" / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert last["step"] == info["step"]
    r = kitchen("resume", str(run_dir))
    assert r.code == 0, r
    assert json.loads((run_dir / "run.json").read_text())["step"] == steps


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(kitchen, tmp_path):
    run_dir = tmp_path / "nan"
    r = kitchen("run", "adapters=noop", "telemetry=jsonl", "max_steps=20", "save_every=4", "pipeline_depth=0",
                "adapters.training.nan_at_step=7", f"run_dir={run_dir}")
    assert r.code == 2, r
    assert "loss became nan at step 7" in r.err and "step 4" in r.err and "Traceback" not in r.err
    records = [json.loads(line) for line in (run_dir / "checkpoints" / "checkpoints.jsonl").read_text().splitlines()]
    assert [c["step"] for c in records] == [4]
    assert (run_dir / "checkpoints" / "step_000004").is_dir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["step"] == 7, info
    # with steps in flight (the default pipeline_depth) the record and `kitchen runs` still name the step that failed
    deep = tmp_path / "nan-deep"
    r = kitchen("run", "adapters=noop", "telemetry=jsonl", "max_steps=20", "pipeline_depth=2",
                "adapters.training.nan_at_step=3", f"run_dir={deep}")
    assert r.code == 2 and "loss became nan at step 3" in r.err, r
    assert json.loads((deep / "run.json").read_text())["step"] == 3
    assert "3/20" in kitchen("runs", str(deep)).out
