"""The built wheel carries conf/, recipes/ and the shipped data: `pip install .` then `kitchen run` works anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_wheel_runs_from_any_directory(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("crucible_kitchen-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}

    def kitchen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kitchen.cli", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import kitchen; print(kitchen.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))
    listing = kitchen("recipes")
    assert listing.returncode == 0 and "rl_basic" in listing.stdout, listing.stderr
    r = kitchen("run", "adapters=noop", "telemetry=jsonl", "max_steps=2", "run_dir=r")
    assert r.returncode == 0, r.stderr
    assert json.loads((elsewhere / "r" / "run.json").read_text())["status"] == "completed"
