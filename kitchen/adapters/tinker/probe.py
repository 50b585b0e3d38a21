"""Fail fast when the Tinker server cannot be reached at all.

The SDK retries connection errors for a very long time (a closed port kept
``kitchen run adapters=tinker`` waiting for over 300 s, and the SDK's default URL with
no network for 21 minutes, whatever ``max_retries`` and ``timeout_s`` said). Before
opening a session - and in ``kitchen validate`` - we make one cheap HTTP request of our
own to the URL the SDK will use (``base_url``, else ``TINKER_BASE_URL``, else the SDK's
default): any HTTP answer, even a 401 or 404, proves a server is there and the SDK takes
over with its usual retries for transient errors. Only when nothing answers for
``deadline_s`` (connection refused, DNS failure, no route, a dead proxy, connect
timeouts) do we stop with one paragraph naming the URL.
"""

from __future__ import annotations

import os
import time

from kitchen.errors import BackendError
from kitchen.io.secrets import redact_url

# The SDK's own default (tinker.lib.base_url.DEFAULT_BASE_URL), copied so that validate
# needs no SDK import (the SDK imports torch); tests/unit/runs/test_fail_fast.py keeps them equal.
DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"
DEFAULT_DEADLINE_S = 30.0


def resolve_base_url(base_url: str | None = None) -> str:
    """The URL the SDK will talk to: the configured one, else $TINKER_BASE_URL, else the SDK's default."""
    return (str(base_url or "") or os.environ.get("TINKER_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def check_reachable(base_url: str | None, *, deadline_s: float | None = None, connect_timeout_s: float = 5.0) -> None:
    import httpx

    base_url = resolve_base_url(base_url)
    deadline_s = DEFAULT_DEADLINE_S if deadline_s is None else float(deadline_s)
    connect_timeout_s = max(0.5, min(connect_timeout_s, deadline_s))
    url = base_url + "/api/v1/healthz"
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
    shown = redact_url(base_url)
    reason = f"{type(last).__name__}: {redact_url(str(last))}" if last is not None else "no answer"
    default = base_url == DEFAULT_BASE_URL.rstrip("/")
    where = f"the Tinker service at {shown} (the SDK's default URL)" if default else f"the Tinker server at {shown}"
    hint = ("Check the network (and any HTTPS_PROXY), or point TINKER_BASE_URL / adapters.training.base_url at "
            "another server (for a local one: `kitchen serve --port PORT`)." if default else
            "Check TINKER_BASE_URL / adapters.training.base_url, and that the server is running "
            "(for a local one: `kitchen serve --port PORT`).")
    raise BackendError(f"Cannot reach {where} ({reason}; retried for {deadline_s:g}s); nothing was started.", hint=hint)
