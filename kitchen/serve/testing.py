"""Start ``kitchen serve`` in a subprocess on a free loopback port (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class ServerProcess:
    base_url: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def serve_subprocess(api_key: str, backend: str = "noop", *, latency_ms: float = 0.0, faults: str | None = None,
                     stall_s: float | None = None, state_dir: str | None = None, startup_timeout_s: float = 120.0,
                     log_level: str = "WARNING", extra_args: tuple[str, ...] = (),
                     entry: tuple[str, ...] = (sys.executable, "-m", "kitchen.serve")) -> Iterator[ServerProcess]:
    """Yield a running server; the key travels in the environment, never on the command line.

    ``entry`` starts it: ``python -m kitchen.serve`` by default, or e.g. ``("kitchen", "serve")``
    to go through the CLI a user types (same options).
    """
    with tempfile.TemporaryDirectory(prefix="kitchen-serve-test-") as tmp:
        ready = Path(tmp) / "ready.json"
        log_path = Path(tmp) / "server.log"
        cmd = [*entry, "--host", "127.0.0.1", "--port", "0", "--backend", backend,
               "--latency-ms", str(latency_ms), "--ready-file", str(ready), "--state-dir", state_dir or str(Path(tmp) / "state"),
               "--log-level", log_level]
        if faults:
            cmd += ["--faults", faults]
        if stall_s is not None:
            cmd += ["--stall-s", str(stall_s)]
        cmd += list(extra_args)
        env = {**os.environ, "KITCHEN_SERVE_API_KEY": api_key}
        env.pop("KITCHEN_SERVE_FAULTS", None)
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + startup_timeout_s
                while not ready.exists():
                    if proc.poll() is not None:
                        raise RuntimeError(f"kitchen serve exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"kitchen serve did not start in {startup_timeout_s}s:\n{log_path.read_text(errors='replace')}")
                    time.sleep(0.05)
                info = json.loads(ready.read_text())
                yield ServerProcess(info["base_url"], int(info["port"]), proc, log_path)
            finally:
                proc.terminate()  # SIGTERM: the server drains and exits 0
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
