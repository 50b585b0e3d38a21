"""An unreachable Tinker is exit 2, quickly, in `run` and `validate` (issue 24 item 1).

Nothing here reaches the internet: a closed loopback port, a name under ``.invalid``
(RFC 2606: never resolves), and the SDK's default URL behind a dead HTTPS proxy (this
machine has no network either). Each run is a real subprocess of the CLI, bounded in time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO

KEY = "tml-fake-fail-fast-key"
DEADLINE = 3  # adapters.training.connect_deadline_s for these runs (default 30)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


def kitchen(cmd: str, tmp_path, extra_env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k not in ("TINKER_BASE_URL", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")}
    env.update({"TINKER_API_KEY": KEY, "HOME": str(tmp_path), "COLUMNS": "200", **extra_env})
    argv = [sys.executable, "-m", "kitchen.cli", cmd, "recipe=sl_basic", "adapters=tinker", "model=tiny-llama",
            "max_steps=2", f"adapters.training.connect_deadline_s={DEADLINE}", f"run_dir={tmp_path / 'run'}", *args]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    return proc, time.monotonic() - t0


CASES = {
    "closed-port": lambda: ({"TINKER_BASE_URL": f"http://127.0.0.1:{closed_port()}"}, None),
    "dns-failure": lambda: ({"TINKER_BASE_URL": "http://tinker.kitchen-test.invalid:8000"}, None),
    # no TINKER_BASE_URL: the SDK's default URL, through a proxy that refuses connections
    "default-url": lambda: ({"HTTPS_PROXY": f"http://127.0.0.1:{closed_port()}"}, "https://tinker.thinkingmachines.dev/services/tinker-prod"),
}


@pytest.mark.parametrize("cmd", ["run", "validate"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_unreachable_tinker_is_exit_2_naming_the_url(tmp_path, cmd, case):
    env, url = CASES[case]()
    url = url or env["TINKER_BASE_URL"]
    proc, elapsed = kitchen(cmd, tmp_path, env)
    err = proc.stderr
    assert proc.returncode == 2, (proc.stdout, err)
    assert "Cannot reach the Tinker s" in err and url in err, err
    assert "Traceback" not in err
    assert "resume" not in err.lower(), err  # nothing was trained: no resume to suggest
    assert elapsed < DEADLINE + 60, elapsed
    assert not (tmp_path / "run").exists()  # refused before anything was written
    if cmd == "validate":
        assert "ok" not in proc.stdout.split()


def test_the_default_url_is_the_sdks():
    from tinker.lib.base_url import DEFAULT_BASE_URL

    from kitchen.adapters.tinker.probe import DEFAULT_BASE_URL as OURS

    assert OURS == DEFAULT_BASE_URL


def test_a_failure_suggests_resume_only_with_a_checkpoint(tmp_path):
    from kitchen.adapters.tinker.client import TinkerTrainingClient, to_backend_error

    client = TinkerTrainingClient(base_url="http://127.0.0.1:9")
    client.set_checkpoint_dir(tmp_path / "checkpoints")
    exc = ConnectionError("refused")
    assert not client.has_checkpoint()
    assert "Resume" not in str(to_backend_error(exc, "a step", client.base_url, resumable=client.has_checkpoint()).hint)
    (tmp_path / "checkpoints" / "step_000002").mkdir(parents=True)
    assert client.has_checkpoint()
    assert "Resume" in str(to_backend_error(exc, "a step", client.base_url, resumable=client.has_checkpoint()).hint)
