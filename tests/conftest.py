"""Shared fixtures: run the real `kitchen` CLI in a subprocess, with isolated caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tokenized data goes to a per-session cache; model caches are shared via KITCHEN_MODEL_CACHE if set."""
    if "KITCHEN_CACHE_DIR" not in os.environ:
        os.environ["KITCHEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("kitchen-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


SERVE_KEY = "tml-test-serve-key"


@pytest.fixture(scope="module")
def local_server():
    """`kitchen serve` on the tiny local backend, on a free loopback port (one per test module)."""
    from kitchen.serve.testing import serve_subprocess

    with serve_subprocess(SERVE_KEY, "local") as srv:
        yield srv


@pytest.fixture(scope="module")
def noop_server():
    """`kitchen serve` on the noop backend (fast; for protocol-level tests)."""
    from kitchen.serve.testing import serve_subprocess

    with serve_subprocess(SERVE_KEY, "noop") as srv:
        yield srv


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    @property
    def text(self) -> str:
        return self.out + self.err

    def __repr__(self) -> str:
        return f"<exit {self.code}>\nstdout:\n{self.out[-3000:]}\nstderr:\n{self.err[-3000:]}"


def run_kitchen(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "kitchen.cli", *args],
        cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    return Result(proc)


@pytest.fixture
def kitchen():
    return run_kitchen


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps_of(run_dir: Path) -> dict[int, dict]:
    """The last training-step row per step (a resumed run re-logs the steps after its checkpoint)."""
    rows: dict[int, dict] = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if row.get("split") is None and "step" in row:
            rows[row["step"]] = row
    return rows


def step_losses(run_dir: Path) -> dict[int, float]:
    return {step: row["loss"] for step, row in steps_of(run_dir).items() if "loss" in row}


def evals_of(run_dir: Path) -> list[dict]:
    return [row for row in read_jsonl(run_dir / "metrics.jsonl") if row.get("split") == "test"]


def assert_completed(run_dir: Path, steps: int) -> dict:
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed", info.get("error")
    assert info["step"] == steps
    assert (run_dir / "final").is_dir()
    return info


def run_completed(kitchen, run_dir: Path, *args: str, env: dict | None = None) -> dict:
    """`kitchen run ARGS run_dir=RUN_DIR`, which must complete; returns its run.json."""
    r = kitchen("run", *args, f"run_dir={run_dir}", env=env)
    assert r.code == 0, r
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed", info.get("error")
    return info


def dataset_line(run_dir: Path) -> str:
    """The run's `dataset:` line (detected format and row counts)."""
    (line,) = [e["message"] for e in read_jsonl(run_dir / "events.jsonl")
               if e["event"] == "run.info" and str(e.get("message", "")).startswith("dataset:")]
    return line
