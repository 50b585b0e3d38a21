"""Crash-safety measures (issue 13): SIGKILLs while checkpoints are written, then a resume
from a moved run dir; and concurrent starts on one run dir.

For each backend (noop, and the local backend on the tiny model) one uninterrupted
reference run is made; then each trial starts the same run with ``save_every=1`` (a
checkpoint every step), SIGKILLs it after a random number of checkpoints plus a random
delay (even trials) or the moment a checkpoint's temp dir appears (odd trials, aiming
inside a checkpoint write), moves the run dir, runs
``kitchen resume NEWDIR`` and compares every step's loss with the reference, bit for bit
(and, on local, the final adapter weights). Then it starts three runs on one fresh dir at
the same moment, several times, and counts how many ran.

    .venv/bin/python benchmarks/bench_kills.py [--noop 10] [--local 4] [--races 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOOP = ("adapters=noop", "telemetry=jsonl", "num_preview_samples=0", "pipeline_depth=0")
LOCAL = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "batch_size=4", "~test_dataset", "num_preview_samples=0",
         "telemetry=jsonl", "lr_schedule=cosine", "warmup_steps=3", "lora_dropout=0.1")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kitchen.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kitchen.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def losses(run_dir: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("split") is None and "step" in row and "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def weights(run_dir: Path) -> dict | None:
    files = sorted((run_dir / "final" / "adapter").glob("*.safetensors"))
    if not files:
        return None
    from safetensors.torch import load_file

    return load_file(str(files[0]))


def same_weights(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def index_len(run_dir: Path) -> int:
    index = run_dir / "checkpoints" / "checkpoints.jsonl"
    return len(index.read_text().splitlines()) if index.exists() else 0


def kill_trials(name: str, args: tuple[str, ...], steps: int, trials: int, rng: random.Random, root: Path) -> dict:
    ref = root / f"{name}-ref"
    r = cli("run", *args, f"max_steps={steps}", "save_every=1", f"run_dir={ref}")
    assert r.returncode == 0, r.stderr[-2000:]
    ref_losses, ref_weights = losses(ref), weights(ref)
    stats = {"kills": 0, "mid_write": 0, "failed_resumes": 0, "not_identical": 0, "finished_before_kill": 0}
    for t in range(trials):
        run_dir = root / f"{name}-{t}"
        proc = popen("run", *args, f"max_steps={steps}", "save_every=1", f"run_dir={run_dir}")
        want = rng.randint(1, max(1, steps // 3))
        deadline = time.monotonic() + 300
        while index_len(run_dir) < want and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if t % 2:  # odd trials: aim at a checkpoint write, killing as soon as its temp dir shows up
            ckpts = run_dir / "checkpoints"
            while proc.poll() is None and time.monotonic() < deadline and not any(ckpts.glob(".step_*.tmp*")):
                pass
        else:
            time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is not None:
            stats["finished_before_kill"] += 1
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stats["kills"] += 1
        if list((run_dir / "checkpoints").glob(".step_*.tmp*")):
            stats["mid_write"] += 1  # killed inside a checkpoint write: its temp dir was left behind
        moved = root / f"{name}-{t}-moved"
        shutil.move(str(run_dir), str(moved))
        r = cli("resume", str(moved))
        if r.returncode != 0:
            stats["failed_resumes"] += 1
            print(f"  {name} trial {t}: resume failed: {r.stderr.strip()[-400:]}", file=sys.stderr)
            continue
        if losses(moved) != ref_losses or not same_weights(weights(moved), ref_weights):
            stats["not_identical"] += 1
    return stats


def race_trials(trials: int, root: Path) -> dict:
    stats = {"races": 0, "exactly_one_ran": 0, "clean_index": 0}
    for t in range(trials):
        run_dir = root / f"race-{t}"
        procs = [subprocess.Popen([sys.executable, "-m", "kitchen.cli", "run", *NOOP, "max_steps=30", "save_every=5",
                                   f"learning_rate={lr}", f"run_dir={run_dir}"], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for lr in ("1e-4", "2e-4", "3e-4")]
        codes = sorted(p.wait() for p in procs)
        stats["races"] += 1
        stats["exactly_one_ran"] += codes == [0, 2, 2]
        steps = [json.loads(line)["step"] for line in (run_dir / "checkpoints" / "checkpoints.jsonl").read_text().splitlines()]
        stats["clean_index"] += steps == [5, 10, 15, 20, 25, 30]
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noop", type=int, default=10, help="kill trials on the noop backend")
    ap.add_argument("--local", type=int, default=4, help="kill trials on the local backend (tiny model)")
    ap.add_argument("--races", type=int, default=4, help="concurrent-start trials")
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    with tempfile.TemporaryDirectory(prefix="kitchen-bench-kills-") as tmp:
        root = Path(tmp)
        t0 = time.time()
        rows = [("noop", kill_trials("noop", NOOP, 200, opts.noop, rng, root))]
        if opts.local:
            rows.append(("local", kill_trials("local", LOCAL, 24, opts.local, rng, root)))
        for name, s in rows:
            print(f"{name:5s} kills {s['kills']} (inside a checkpoint write: {s['mid_write']}), failed resumes "
                  f"{s['failed_resumes']}, not bit-identical {s['not_identical']}, finished before the kill {s['finished_before_kill']}")
        if opts.races:
            s = race_trials(opts.races, root)
            print(f"races: {s['races']} x 3 simultaneous starts on one dir: exactly one ran in {s['exactly_one_ran']}, "
                  f"index clean in {s['clean_index']}")
        print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
