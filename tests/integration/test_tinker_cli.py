"""`kitchen run adapters=tinker` through the real tinker SDK, over HTTP, against `kitchen serve`."""

from __future__ import annotations

import json
import os

import pytest

from conftest import read_jsonl, step_losses
from kitchen.serve.testing import serve_subprocess

KEY = "tml-kitchen-test-secret-4f1c9a"
TINY = ("recipe=sl_basic", "model=tiny-llama", "max_steps=6", "batch_size=4", "eval_every=3", "save_every=3",
        "num_preview_samples=1", "preview_max_tokens=8", "telemetry=jsonl", "lr_schedule=constant")


@pytest.fixture(scope="module")
def server():
    with serve_subprocess(KEY, backend="local") as srv:
        yield srv


def tinker_env(server, key: str | None = KEY) -> dict[str, str]:
    env = {"TINKER_BASE_URL": server.base_url}
    if key is not None:
        env["TINKER_API_KEY"] = key
    return env


def test_sl_basic_on_tinker_matches_local(kitchen, server, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "tinker"
    r = kitchen("run", *TINY, "adapters=local", f"run_dir={local}")
    assert r.code == 0, r
    r = kitchen("run", *TINY, "adapters=tinker", "pipeline_depth=2", f"run_dir={remote}", env=tinker_env(server))
    assert r.code == 0, r
    a, b = step_losses(local), step_losses(remote)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    evals = [m for m in read_jsonl(remote / "metrics.jsonl") if m.get("split") == "test"]
    assert [e["step"] for e in evals] == [0, 3, 6]
    assert json.loads((remote / "run.json").read_text())["status"] == "completed"
    assert (remote / "final" / "tinker_weights.json").exists()


def test_api_key_never_lands_in_the_run_dir(kitchen, server, tmp_path):
    run_dir = tmp_path / "secret"
    r = kitchen("run", *TINY, "adapters=tinker", f"run_dir={run_dir}", env=tinker_env(server))
    assert r.code == 0, r
    assert KEY not in r.text
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_missing_key_is_a_clear_error_before_any_work(kitchen, server, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TINKER_API_KEY"}
    env.update(TINKER_BASE_URL=server.base_url, HOME=str(tmp_path))  # no stored SDK credential either
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "kitchen.cli", "run", *TINY, "adapters=tinker", f"run_dir={tmp_path / 'x'}"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "TINKER_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_resume_on_tinker_continues_exactly(kitchen, server, tmp_path):
    run_dir, ref = tmp_path / "r", tmp_path / "ref"
    base = (*TINY[:2], "batch_size=4", "save_every=2", "eval_every=0", "num_preview_samples=0", "telemetry=jsonl",
            "lr_schedule=constant", "adapters=tinker")
    assert kitchen("run", *base, "max_steps=4", f"run_dir={run_dir}", env=tinker_env(server)).code == 0
    r = kitchen("run", *base, "max_steps=6", f"run_dir={run_dir}", "resume=true", env=tinker_env(server))
    assert r.code == 0, r
    assert kitchen("run", *base, "max_steps=6", f"run_dir={ref}", env=tinker_env(server)).code == 0
    a, b = step_losses(run_dir), step_losses(ref)
    for step in range(1, 7):
        assert a[step] == pytest.approx(b[step], rel=1e-5), step


@pytest.mark.parametrize(
    ("recipe", "metric", "own"),
    [("rl_basic", "reward_mean", ("group_size=2", "groups_per_batch=2", "max_tokens=8")),
     ("dpo_basic", "dpo_accuracy", ("batch_size=4",))],
)
def test_post_training_recipes_run_on_tinker(kitchen, server, tmp_path, recipe, metric, own):
    run_dir = tmp_path / recipe
    r = kitchen("run", f"recipe={recipe}", "adapters=tinker", "model=tiny-llama", "max_steps=2", *own,
                "eval_max_examples=4", "num_preview_samples=1",
                "save_every=0", "telemetry=jsonl", f"run_dir={run_dir}", env=tinker_env(server))
    assert r.code == 0, r
    rows = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m.get("split") is None]
    assert [m["step"] for m in rows] == [1, 2] and all(metric in m for m in rows)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_distillation_on_tinker_with_a_run_dir_teacher(kitchen, server, tmp_path):
    teacher = tmp_path / "teacher"
    assert kitchen("run", "recipe=sl_basic", "adapters=local", "model=tiny-llama", "max_steps=3", "batch_size=4",
                   "~test_dataset", "num_preview_samples=0", "telemetry=jsonl", f"run_dir={teacher}").code == 0
    run_dir = tmp_path / "distill"
    r = kitchen("run", "recipe=distill_basic", "adapters=tinker", "model=tiny-llama", f"teacher={teacher}",
                "max_steps=2", "group_size=2", "groups_per_batch=2", "max_tokens=8", "eval_max_examples=2",
                "num_preview_samples=0", "save_every=0", "telemetry=jsonl", f"run_dir={run_dir}", env=tinker_env(server))
    assert r.code == 0, r
    rows = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m.get("split") is None]
    assert [m["step"] for m in rows] == [1, 2] and all("teacher_kl" in m for m in rows)


def test_closed_port_fails_fast_with_the_url(tmp_path):
    """Nothing listening: exit 2 within about a minute, one paragraph naming the URL, no hang."""
    import socket
    import subprocess
    import sys
    import time

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # now closed: connections are refused
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TINKER_BASE_URL": url, "TINKER_API_KEY": KEY, "HOME": str(tmp_path)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kitchen.cli", "run", *TINY, "adapters=tinker", "max_retries=0",
                           f"run_dir={tmp_path / 'x'}"], env=env, capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert url in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 90, elapsed
