"""``kitchen serve`` stops cleanly on SIGTERM within ``--shutdown-timeout-s`` (issue 23, item E),
even in the middle of a long sample: exit 0, no abort, queued work answered.

The real server on the local backend's tiny-llama (real torch sampling) in a subprocess.
"""

from __future__ import annotations

import signal
import time

import httpx

from conftest import SERVE_KEY as KEY
from kitchen.serve.testing import serve_subprocess

H = {"X-API-Key": KEY}


def _sample(url: str, max_tokens: int) -> httpx.Response:
    body = {"base_model": "tiny-llama", "num_samples": 4,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [5, 6, 7, 8]}]},
            # greedy: the random tiny model's greedy path never reaches EOS, so a 60,000-token sample
            # really runs for minutes; at temperature 1 EOS (1 in ~260 tokens) can end all four in a second
            "sampling_params": {"max_tokens": max_tokens, "temperature": 0.0, "stop": []}}
    return httpx.post(f"{url}/api/v1/asample", json=body, headers=H, timeout=30)


def test_sigterm_during_a_long_sample_exits_0_within_the_shutdown_timeout(tmp_path):
    with serve_subprocess(KEY, "local", state_dir=str(tmp_path / "state"),
                          extra_args=("--shutdown-timeout-s", "3", "--model", "tiny-llama")) as srv:
        warm = _sample(srv.base_url, 2)  # loads the base sampler
        assert warm.status_code == 200, warm.text
        httpx.post(f"{srv.base_url}/api/v1/retrieve_future", json={"request_id": warm.json()["request_id"]},
                   headers=H, timeout=60)
        long = _sample(srv.base_url, 60_000)  # minutes of sampling on this CPU
        queued = _sample(srv.base_url, 60_000)
        assert long.status_code == 200 and queued.status_code == 200, (long.text, queued.text)
        time.sleep(1.0)  # the first is inside the model's loop now
        t0 = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        code = srv.process.wait(timeout=30)
        took = time.monotonic() - t0
        log = srv.log()
        assert code == 0, (code, log[-3000:])
        assert took < 3 + 4, took  # the bound, plus process teardown
        assert "terminate called" not in log and "Traceback" not in log, log[-3000:]
        assert "1 queued request(s) cancelled" in log and "--shutdown-timeout-s" in log, log[-3000:]
