"""Start a real `kitchen run`, wait for its first checkpoint, compare a resumed run with an uninterrupted one.

Shared by the resume tests of several packages (runs, data streaming).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, step_losses


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kitchen.cli", "run", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    index = run_dir / "checkpoints" / "checkpoints.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if index.exists() and index.read_text().strip():
            return json.loads(index.read_text().splitlines()[-1])["step"]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted((run_dir / "final" / "adapter").glob("*.safetensors"))
    assert files, list((run_dir / "final").rglob("*"))
    return load_file(str(files[0]))


def assert_same_run(resumed: Path, reference: Path, steps: int) -> None:
    import torch

    a, b = step_losses(resumed), step_losses(reference)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step
    wa, wb = final_weights(resumed), final_weights(reference)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-6, atol=1e-7), key
