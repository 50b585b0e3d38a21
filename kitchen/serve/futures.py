"""The Tinker async-future protocol's server side: a request returns a future id at once,
``retrieve_future`` long-polls for the result."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from kitchen.serve.errors import RequestError

LONG_POLL_S = 20.0  # < the SDK's 45 s retrieve_future timeout
MAX_FUTURES = 20000


@dataclass
class FutureRecord:
    request_id: str
    model_id: str | None
    event: threading.Event = field(default_factory=threading.Event)
    ready_at: float = 0.0
    payload: bytes | None = None  # proto bytes
    json_body: dict[str, Any] | None = None
    error: str | None = None
    category: str = "server"

    def finish(self, *, latency_s: float, payload: bytes | None = None, json_body: dict | None = None,
               error: str | None = None, category: str = "server") -> None:
        self.payload, self.json_body, self.error, self.category = payload, json_body, error, category
        self.ready_at = time.monotonic() + latency_s
        self.event.set()


class FutureTable:
    """Futures by request id (the oldest dropped beyond :data:`MAX_FUTURES`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: "OrderedDict[str, FutureRecord]" = OrderedDict()

    def new(self, model_id: str | None) -> FutureRecord:
        rec = FutureRecord(request_id=uuid.uuid4().hex, model_id=model_id)
        with self._lock:
            self._futures[rec.request_id] = rec
            while len(self._futures) > MAX_FUTURES:
                self._futures.popitem(last=False)
        return rec

    def wait(self, request_id: str, timeout: float = LONG_POLL_S) -> FutureRecord | None:
        """The finished record, or None when still pending after ``timeout`` (long poll)."""
        with self._lock:
            rec = self._futures.get(request_id)
        if rec is None:
            raise RequestError(404, f"unknown request_id {request_id!r} (futures are kept in server memory; was the server restarted?)")
        deadline = time.monotonic() + timeout
        if not rec.event.wait(timeout):
            return None
        delay = rec.ready_at - time.monotonic()
        if delay > 0:
            if time.monotonic() + delay > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return None
            time.sleep(delay)
        return rec

    def pending(self) -> int:
        with self._lock:
            return sum(1 for f in self._futures.values() if not f.event.is_set())
