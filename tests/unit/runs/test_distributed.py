"""Data parallel on PyTorch's own engine: torchrun, gloo, 2 CPU processes, the tiny model.

Each rank takes a contiguous share of every global batch and gradients are summed across
ranks, so a 2-process run must take the 1-process run's steps (rel <= 1e-4). Only rank 0
writes the run dir; a SIGKILLed job resumes exactly; a dying rank takes the job down.

The default suite keeps the 1-vs-2-process equality, the rank-0 writes and the batch split
error; every test that starts more torchrun jobs (FSDP2, kill and resume, resume through
the launcher, sweeps on 2 ranks, a dying rank) is ``slow`` (CI runs those too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_completed, read_jsonl, run_kitchen, step_losses

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

COMMON = ("recipe=sl_basic", "model=tiny-llama", "batch_size=4", "num_preview_samples=0", "eval_max_examples=8")
ENV = {"OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nproc: int = 2, timeout: float = 300, script: str | None = None,
             command: str = "run") -> subprocess.CompletedProcess:
    target = [script] if script else ["-m", "kitchen"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--monitor-interval=0.5", *target, command, *args]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout)


def metric_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") is None and "step" in r and "loss" in r]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dp") / "one"
    res = run_kitchen("run", *COMMON, "max_steps=5", f"run_dir={run_dir}", env=ENV)
    assert res.code == 0, res
    return run_dir


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dp") / "two"
    proc = torchrun(*COMMON, "max_steps=5", "save_every=2", f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def test_two_ranks_take_the_one_process_steps(one_process, two_ranks):
    assert_completed(two_ranks, 5)
    one, two = step_losses(one_process), step_losses(two_ranks)
    assert sorted(two) == [1, 2, 3, 4, 5]
    for step, loss in one.items():
        assert two[step] == pytest.approx(loss, rel=1e-4)


def test_only_rank0_writes_one_metrics_line_per_step(two_ranks):
    rows = metric_rows(two_ranks)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    index = read_jsonl(two_ranks / "checkpoints" / "checkpoints.jsonl")
    assert [r["step"] for r in index] == [2, 4, 5]
    state = json.loads((two_ranks / "checkpoints" / "step_000004" / "state.json").read_text())
    assert state["world_size"] == 2
    events = read_jsonl(two_ranks / "events.jsonl")
    assert sum(1 for e in events if e["event"] == "workflow.start") == 1
    session = [e for e in events if str(e.get("message", "")).startswith("session:")]
    assert len(session) == 1 and "world_size=2" in session[0]["message"] and "parallel=ddp" in session[0]["message"]


@pytest.mark.slow
def test_full_finetune_with_fsdp2_through_kitchen_launcher(tmp_path):
    """``distributed.nproc_per_node=2`` on ``kitchen run`` starts the ranks through torch.distributed.run."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    res1 = run_kitchen("run", *COMMON, "lora_rank=0", "max_steps=3", f"run_dir={one}", env=ENV)
    assert res1.code == 0, res1
    res2 = run_kitchen("run", *COMMON, "lora_rank=0", "max_steps=3", "distributed.nproc_per_node=2", f"run_dir={two}", env=ENV)
    assert res2.code == 0, res2
    assert "parallel=fsdp2" in res2.text
    assert_completed(two, 3)
    a, b = step_losses(one), step_losses(two)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)
    # the final weights are whole (gathered from the shards), in the base dtype
    from safetensors import safe_open

    files = list((two / "final").glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as fh:
        t = fh.get_tensor("model.embed_tokens.weight")
    assert t.dtype == torch.float32 and t.shape[1] == 64


@pytest.mark.slow
def test_sigkill_and_resume_under_torchrun_is_exact(tmp_path, two_ranks):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "kitchen", "run",
           *COMMON, "max_steps=5", "save_every=2", f"run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    index = run_dir / "checkpoints" / "checkpoints.jsonl"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (index.exists() and index.read_text().strip()):
            time.sleep(0.2)
        assert index.exists(), "no checkpoint was written"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done = [r["step"] for r in read_jsonl(index)]
    assert done and done[-1] < 5
    res = torchrun(str(run_dir), command="resume")  # torchrun --nproc-per-node 2 -m kitchen resume RUN_DIR
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert_completed(run_dir, 5)
    assert step_losses(run_dir) == step_losses(two_ranks)  # bit for bit at the same world size


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """A LoRA run started by ``kitchen run ... distributed.nproc_per_node=2`` (config.yaml records the 2)."""
    run_dir = tmp_path_factory.mktemp("dp") / "launched"
    res = run_kitchen("run", *COMMON, "max_steps=5", "save_every=2", "distributed.nproc_per_node=2", f"run_dir={run_dir}", env=ENV)
    assert res.code == 0, res
    return run_dir


@pytest.mark.slow
def test_kitchen_resume_relaunches_a_launched_run_on_its_ranks(tmp_path, launched, two_ranks):
    import shutil

    assert step_losses(launched) == step_losses(two_ranks)  # the launcher's ranks are torchrun's ranks
    run_dir = tmp_path / "again"
    shutil.copytree(launched, run_dir)
    index = run_dir / "checkpoints" / "checkpoints.jsonl"
    index.write_text(index.read_text().splitlines()[0] + "\n")  # the last complete checkpoint is step 2
    res = run_kitchen("resume", str(run_dir), env=ENV)  # no torchrun: kitchen relaunches on 2 ranks itself
    assert res.code == 0, res
    assert "world_size=2" in res.text and "parallel=ddp" in res.text
    assert "written by 2 process(es)" not in res.text  # same world size: no data-order note
    assert [r["step"] for r in metric_rows(run_dir)] == [1, 2, 3, 4, 5, 3, 4, 5]
    assert step_losses(run_dir) == step_losses(launched)  # bit for bit


@pytest.mark.slow
def test_each_sweep_job_runs_on_two_ranks(tmp_path, one_process):
    """``kitchen run -m ... distributed.nproc_per_node=2``: every job goes through torch's launcher."""
    sweep = tmp_path / "sweep"
    res = run_kitchen("run", "-m", *COMMON, "max_steps=5", "eval_max_examples=4,8", "distributed.nproc_per_node=2",
                      f"hydra.sweep.dir={sweep}", env=ENV, timeout=600)
    assert res.code == 0, res
    jobs = sorted(p.parent for p in sweep.glob("*/run.json"))
    assert len(jobs) == 2
    for job in jobs:
        assert_completed(job, 5)
        assert [r["step"] for r in metric_rows(job)] == [1, 2, 3, 4, 5]  # rank 0 alone wrote the metrics
        session = [e for e in read_jsonl(job / "events.jsonl") if str(e.get("message", "")).startswith("session:")]
        assert len(session) == 1 and "world_size=2" in session[0]["message"]
        losses = step_losses(job)
        for step, loss in step_losses(one_process).items():  # eval_max_examples does not change training
            assert losses[step] == pytest.approx(loss, rel=1e-4)


@pytest.mark.slow
def test_resume_at_another_world_size_works_and_says_so(tmp_path, two_ranks):
    import shutil

    run_dir = tmp_path / "regrown"
    shutil.copytree(two_ranks, run_dir)
    index = run_dir / "checkpoints" / "checkpoints.jsonl"
    lines = index.read_text().splitlines()
    index.write_text(lines[0] + "\n")  # keep only step 2
    res = run_kitchen("run", *COMMON, "max_steps=5", f"run_dir={run_dir}", "resume=true", env=ENV)
    assert res.code == 0, res
    assert "written by 2 process(es) and the run now has 1" in res.text
    a, b = step_losses(two_ranks), step_losses(run_dir)
    for step in (3, 4, 5):
        assert b[step] == pytest.approx(a[step], rel=1e-4)


@pytest.mark.slow
def test_a_dying_rank_takes_the_job_down_with_its_error(tmp_path):
    script = tmp_path / "die.py"
    script.write_text(
        "import os, sys\n"
        "from kitchen.adapters.local import client as C\n"
        "orig = C.LocalTrainingClient.forward_backward\n"
        "def fb(self, *a, **k):\n"
        "    if os.environ.get('RANK') == '1' and self.step == 1:\n"
        "        import time; open(os.environ['DIE_STAMP'], 'w').write(str(time.time()))\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    return orig(self, *a, **k)\n"
        "C.LocalTrainingClient.forward_backward = fb\n"
        "from kitchen.cli.commands import main\n"
        "main()\n"
    )
    stamp = tmp_path / "died_at"
    os.environ["DIE_STAMP"] = str(stamp)
    try:
        proc = torchrun(*COMMON, "max_steps=5", f"run_dir={tmp_path / 'run'}", script=str(script), timeout=120)
    finally:
        del os.environ["DIE_STAMP"]
    ended = time.time()
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stdout + proc.stderr
    # rank 0 was blocked in a collective; torchrun stopped it within seconds, nobody hung
    assert ended - float(stamp.read_text()) < 15


def test_world_size_must_divide_the_batch(tmp_path):
    args = [a for a in COMMON if not a.startswith("batch_size=")]
    res = run_kitchen("run", *args, "batch_size=6", "distributed.nproc_per_node=4", f"run_dir={tmp_path / 'r'}")
    assert res.code == 2, res
    assert "batch_size=6 cannot be split evenly over 4 processes" in res.text
    assert "1, 2, 3, 6" in res.text
    assert "Traceback" not in res.text


def test_resume_on_ranks_that_cannot_split_the_batch_is_refused_before_launching(tmp_path):
    run_dir = tmp_path / "r"
    res = run_kitchen("run", "recipe=sl_basic", "adapters=noop", "telemetry=jsonl", "batch_size=4", "max_steps=2",
                      f"run_dir={run_dir}")
    assert res.code == 0, res
    before = (run_dir / "run.json").read_text()
    res = run_kitchen("resume", str(run_dir), "max_steps=4", "distributed.nproc_per_node=3")
    assert res.code == 2, res
    assert "batch_size=4 cannot be split evenly over 3 processes" in res.text and "1, 2, 4" in res.text
    assert "Traceback" not in res.text
    assert (run_dir / "run.json").read_text() == before  # nothing started, nothing written
