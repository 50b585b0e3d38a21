"""Fail fast when the Tinker server cannot be reached at all.

The SDK retries connection errors for a very long time (a closed port kept
``kitchen run adapters=tinker`` waiting for over 300 s, whatever ``max_retries`` and
``timeout_s`` said). Before opening a session we make one cheap HTTP request of our own:
any HTTP answer, even a 401 or 404, proves a server is there and the SDK takes over
with its usual retries for transient errors. Only when nothing answers for
``deadline_s`` (connection refused, DNS failure, no route, connect timeouts) do we stop
with one paragraph naming the URL.
"""

from __future__ import annotations

import time

from kitchen.errors import BackendError


def check_reachable(base_url: str, *, deadline_s: float = 30.0, connect_timeout_s: float = 5.0) -> None:
    import httpx

    url = base_url.rstrip("/") + "/api/v1/healthz"
    stop = time.monotonic() + deadline_s
    delay = 0.5
    last: Exception | None = None
    while True:
        try:
            with httpx.Client(timeout=httpx.Timeout(connect_timeout_s, read=connect_timeout_s * 2)) as client:
                client.get(url)  # any status: someone answered
            return
        except httpx.HTTPError as exc:
            last = exc
        if time.monotonic() + delay > stop:
            break
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    reason = f"{type(last).__name__}: {last}" if last is not None else "no answer"
    raise BackendError(
        f"Cannot reach the Tinker server at {base_url} ({reason}; retried for {deadline_s:g}s).",
        hint="Check TINKER_BASE_URL / tinker.base_url, and that the server is running "
             "(for a local one: `kitchen serve --port PORT`).",
    )
