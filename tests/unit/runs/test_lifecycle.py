"""Nothing lost: moved run dirs, one live run per dir, SIGTERM, torn index, leftovers,
run.json attempts, resume_from, a full disk. Every test drives the real CLI in a subprocess."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, read_jsonl, step_losses

NOOP = ("adapters=noop", "telemetry=jsonl", "num_preview_samples=0")
TINY = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "batch_size=4", "~test_dataset", "num_preview_samples=0",
        "telemetry=jsonl", "lr_schedule=cosine", "warmup_steps=3", "lora_dropout=0.1")


def start(*args: str, cmd: str = "run") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kitchen.cli", cmd, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def index_steps(run_dir: Path) -> list[int]:
    index = run_dir / "checkpoints" / "checkpoints.jsonl"
    steps = []
    for line in index.read_text().splitlines() if index.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return steps


def wait_for_checkpoints(run_dir: Path, proc: subprocess.Popen, count: int = 1, timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = index_steps(run_dir)
        if len(steps) >= count:
            return steps
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {count} checkpoints: {proc.communicate()}")
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


def started_from(run_dir: Path) -> int:
    events = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a line torn by a kill or a full disk (readers skip it)
    return [e for e in events if e["event"] == "workflow.start"][-1]["resumed_from_step"]


def info_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


# ------------------------------------------------------------------ relocatable runs


def test_index_stores_paths_relative_to_the_run_dir(kitchen, tmp_path):
    run_dir = tmp_path / "rel"
    assert kitchen("run", *NOOP, "max_steps=4", "save_every=2", f"run_dir={run_dir}").code == 0
    records = read_jsonl(run_dir / "checkpoints" / "checkpoints.jsonl")
    assert [r["path"] for r in records] == ["checkpoints/step_000002", "checkpoints/step_000004"]
    assert str(tmp_path) not in (run_dir / "checkpoints" / "checkpoints.jsonl").read_text()


@pytest.mark.parametrize("backend", ["noop", "local"])
def test_killed_run_moved_then_resumed_equals_uninterrupted(kitchen, tmp_path, backend):
    """SIGKILL (while checkpoints are being written every step), `mv` the dir, resume: bit-identical losses."""
    steps = 300 if backend == "noop" else 24
    args = (*NOOP, "pipeline_depth=0") if backend == "noop" else TINY
    run_dir, moved, ref = tmp_path / "killed", tmp_path / "elsewhere" / "moved", tmp_path / "ref"
    proc = start(*args, f"max_steps={steps}", "save_every=1", f"run_dir={run_dir}")
    saved = wait_for_checkpoints(run_dir, proc, count=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(saved) < steps
    moved.parent.mkdir()
    shutil.move(str(run_dir), str(moved))
    r = kitchen("resume", str(moved))
    assert r.code == 0, r
    assert started_from(moved) >= max(saved) > 0  # resumed, not restarted from step 0
    assert not run_dir.exists()  # nothing was written at the old location
    assert kitchen("run", *args, f"max_steps={steps}", "save_every=1", f"run_dir={ref}").code == 0
    a, b = step_losses(moved), step_losses(ref)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert all(a[s] == b[s] for s in a), [s for s in a if a[s] != b[s]][:5]  # bit-identical


def test_relative_run_dir_resumes_from_a_named_checkpoint(kitchen, tmp_path):
    """run_dir=runs/x (relative to the cwd), as the README shows it."""
    assert kitchen("run", *NOOP, "max_steps=6", "save_every=2", "run_dir=runs/try1", cwd=tmp_path).code == 0
    assert [r["path"] for r in read_jsonl(tmp_path / "runs/try1/checkpoints/checkpoints.jsonl")][0] == "checkpoints/step_000002"
    r = kitchen("resume", "runs/try1", "resume_from=step_000004", cwd=tmp_path)
    assert r.code == 0 and started_from(tmp_path / "runs/try1") == 4, r
    r = kitchen("resume", str(tmp_path / "runs/try1"), "max_steps=8")
    assert r.code == 0 and started_from(tmp_path / "runs/try1") == 6, r


def test_resume_does_not_log_the_resumed_steps_eval_twice(kitchen, tmp_path):
    """The checkpoint records that its step was evaluated; the resume's "before" eval skips it."""
    run = tmp_path / "run"
    assert kitchen("run", *NOOP, "max_steps=2", "eval_every=2", "save_every=2", f"run_dir={run}").code == 0
    r = kitchen("resume", str(run), "max_steps=4")
    assert r.code == 0, r
    evals = [row["step"] for row in read_jsonl(run / "metrics.jsonl") if row.get("split") == "test"]
    assert evals == [0, 2, 4], evals
    unevaluated = tmp_path / "run2"  # checkpointed at step 2 before the final eval, which then ran
    assert kitchen("run", *NOOP, "max_steps=2", "eval_every=0", "save_every=2", f"run_dir={unevaluated}").code == 0
    assert kitchen("resume", str(unevaluated), "max_steps=3").code == 0
    evals = [row["step"] for row in read_jsonl(unevaluated / "metrics.jsonl") if row.get("split") == "test"]
    assert evals == [0, 2, 3], evals  # the final eval at step 2 came after that checkpoint; it is not repeated


def test_old_absolute_records_still_resume_after_a_move(kitchen, tmp_path):
    run_dir, moved = tmp_path / "old", tmp_path / "old-moved"
    assert kitchen("run", *NOOP, "max_steps=6", "save_every=3", f"run_dir={run_dir}").code == 0
    index = run_dir / "checkpoints" / "checkpoints.jsonl"
    records = read_jsonl(index)
    for rec in records:  # what an older kitchen wrote: absolute paths
        rec["path"] = str(run_dir / rec["path"])
    index.write_text("".join(json.dumps(rec) + "\n" for rec in records))
    r = kitchen("resume", str(run_dir), "max_steps=7")
    assert r.code == 0 and started_from(run_dir) == 6, r
    shutil.move(str(run_dir), str(moved))
    r = kitchen("resume", str(moved), "max_steps=9")
    assert r.code == 0 and started_from(moved) == 7, r


# ----------------------------------------------------------------------------- lock


def test_concurrent_starts_on_one_dir_exactly_one_runs(tmp_path):
    run_dir = tmp_path / "race"
    procs = [start(*NOOP, "max_steps=40", "save_every=5", f"learning_rate={lr}", f"run_dir={run_dir}")
             for lr in ("1e-4", "2e-4", "3e-4")]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2, 2], results
    for code, _out, err in results:
        if code == 2:
            assert "Traceback" not in err
            assert "in use by a live kitchen process" in err or "already holds" in err, err
    assert index_steps(run_dir) == [5, 10, 15, 20, 25, 30, 35, 40]
    assert sorted(step_losses(run_dir)) == list(range(1, 41))
    assert len([r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") is None]) == 40  # not doubled


def test_live_run_refuses_resume_and_overwrite_then_sigterm_checkpoints(kitchen, tmp_path):
    run_dir = tmp_path / "live"
    proc = start(*NOOP, "max_steps=1000000", "save_every=200", f"run_dir={run_dir}")
    try:
        wait_for_checkpoints(run_dir, proc)
        for args in (("resume", str(run_dir)), ("run", *NOOP, "overwrite=true", f"run_dir={run_dir}")):
            r = kitchen(*args)
            assert r.code == 2 and "Traceback" not in r.err, r
            assert f"pid {proc.pid} on host {socket.gethostname()}" in r.err, r
        assert not list(tmp_path.glob("live.old-*"))  # overwrite moved nothing aside
        # SIGTERM = the first Ctrl-C: finish the step, checkpoint, status interrupted, exit 143
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (out, err)
    info = info_of(run_dir)
    assert info["status"] == "interrupted" and info["step"] > 0
    assert index_steps(run_dir)[-1] == info["step"]
    # the lock file stays behind, holding a dead pid: it must not block
    assert (run_dir / ".kitchen.lock").exists()
    r = kitchen("resume", str(run_dir), f"max_steps={info['step'] + 3}")
    assert r.code == 0, r
    assert started_from(run_dir) == info["step"]


# -------------------------------------------------------------------- files stay consistent


def test_torn_index_tail_is_repaired_before_the_next_record(kitchen, tmp_path):
    run_dir = tmp_path / "torn"
    assert kitchen("run", *NOOP, "max_steps=4", "save_every=2", f"run_dir={run_dir}").code == 0
    index = run_dir / "checkpoints" / "checkpoints.jsonl"
    with open(index, "a") as fh:
        fh.write('{"name": "step_0000')  # a write killed half-way
    r = kitchen("resume", str(run_dir), "max_steps=8")
    assert r.code == 0, r
    assert index_steps(run_dir) == [2, 4, 6, 8]  # step 6 is not glued onto the fragment


def test_leftover_temp_dirs_are_removed_at_start_with_one_line(kitchen, tmp_path):
    run_dir = tmp_path / "leftovers"
    assert kitchen("run", *NOOP, "max_steps=4", "save_every=2", f"run_dir={run_dir}").code == 0
    junk = run_dir / "checkpoints" / ".step_000006.tmp-k1ll3d"
    junk.mkdir()
    (junk / "weights.safetensors").write_bytes(b"\0" * 200_000)
    (run_dir / "checkpoints" / ".step_000006.tmp").mkdir()
    (run_dir / ".run.json.tmp-12345").write_text("{")
    keep = run_dir / "checkpoints" / "step_000004"
    r = kitchen("resume", str(run_dir), "max_steps=6")
    assert r.code == 0, r
    assert not junk.exists() and not (run_dir / "checkpoints" / ".step_000006.tmp").exists()
    assert not (run_dir / ".run.json.tmp-12345").exists() and keep.is_dir()
    notes = [e["message"] for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "run.info" and e["message"].startswith("removed")]
    assert len(notes) == 1 and "removed 3 leftover" in notes[0] and "0.2 MB" in notes[0], notes


def test_failed_attempt_never_rewrites_a_completed_record(kitchen, tmp_path):
    run_dir = tmp_path / "attempts"
    assert kitchen("run", *NOOP, "max_steps=4", "save_every=2", "pipeline_depth=0", f"run_dir={run_dir}").code == 0
    done = info_of(run_dir)
    r = kitchen("resume", str(run_dir), "max_steps=10", "adapters.training.nan_at_step=6")
    assert r.code == 2 and "nan" in r.err, r
    info = info_of(run_dir)
    assert (info["status"], info["step"], info["final_metrics"]) == ("completed", 4, done["final_metrics"])
    assert [(a["status"], a["step"]) for a in info["attempts"]] == [("completed", 4), ("failed", 6)]
    assert "nan" in info["attempts"][1]["error"]


def test_resume_from_a_named_checkpoint_or_a_path(kitchen, tmp_path):
    run_dir, ref = tmp_path / "named", tmp_path / "ref"
    assert kitchen("run", *NOOP, "max_steps=10", "save_every=2", f"run_dir={ref}").code == 0
    assert kitchen("run", *NOOP, "max_steps=10", "save_every=2", f"run_dir={run_dir}").code == 0
    r = kitchen("resume", str(run_dir), "resume_from=step_000004")
    assert r.code == 0 and started_from(run_dir) == 4, r
    assert step_losses(run_dir) == step_losses(ref)
    r = kitchen("run", *NOOP, "max_steps=10", "save_every=2", f"run_dir={run_dir}", f"resume_from={run_dir / 'checkpoints' / 'step_000006'}")
    assert r.code == 0 and started_from(run_dir) == 6, r
    assert step_losses(run_dir) == step_losses(ref)
    r = kitchen("resume", str(run_dir), "resume_from=step_000005")
    assert r.code == 2 and "no such checkpoint" in r.err and "step_000004" in r.err and "Traceback" not in r.err, r


# ------------------------------------------------------------------------- full disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 320 KiB tmpfs (needs root); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_one_paragraph_and_keeps_checkpoints(kitchen, tmp_path, tiny_disk):
    run_dir = tiny_disk / "full"
    r = kitchen("run", *NOOP, "max_steps=100000", "save_every=25", f"run_dir={run_dir}")
    assert r.code == 2, r
    assert "Traceback" not in r.err and r.err.strip().startswith("error: Out of disk space while writing"), r
    assert str(run_dir) in r.err and "bytes are free there" in r.err and "needs about" in r.err and "kitchen resume" in r.err, r
    info = info_of(run_dir)  # still valid JSON: updated if it fit, else its previous contents
    assert info["status"] in ("failed", "running")
    assert not [p for p in run_dir.rglob("*.tmp*")], list(run_dir.rglob("*.tmp*"))
    saved = index_steps(run_dir)
    assert saved, "no checkpoint before the disk filled up"
    # earlier checkpoints intact: the copied run resumes from the newest one elsewhere
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    r = kitchen("resume", str(copy), f"max_steps={saved[-1] + 5}")
    assert r.code == 0 and started_from(copy) == saved[-1], r


def test_full_disk_local_checkpoint_names_the_bytes_needed(kitchen, tmp_path, tiny_disk):
    run_dir = tiny_disk / "local"
    r = kitchen("run", *TINY, "max_steps=4", "save_every=2", "lora_rank=64", "telemetry=default", f"run_dir={run_dir}")
    assert r.code == 2 and "Traceback" not in r.err, r
    assert "Out of disk space for checkpoint step_000002" in r.err and "it needs about" in r.err, r
    assert info_of(run_dir)["status"] == "failed"
