"""The Tinker async-future protocol's server side: a request returns a future id at once,
``retrieve_future`` long-polls for the result.

Why results are dropped: a finished future holds its whole result (a sample's tokens
and logprobs, a forward pass's logprobs) until someone asks for it. The table used to
keep the newest 20 000 of them whatever their size, so a client that never retrieved
(or a crashed one) left gigabytes behind. Now a result is dropped a short grace period
after it is first retrieved (the grace lets an SDK whose answer was lost on the way
retrieve it again), and one nobody retrieves is dropped ``result_ttl_s`` after it
finished. :meth:`FutureTable.retained` counts what is held, for ``/metrics``.

``cancel_future`` marks a record cancelled and finishes it with an error: a worker that
takes a cancelled job off its queue skips it (:mod:`kitchen.serve.workers`), so queued
work that nobody wants any more costs nothing. Work already running finishes (the
backends' sampling loops have no cancellation point), and its result is thrown away.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from kitchen.serve.errors import RequestError

LONG_POLL_S = 20.0  # < the SDK's 45 s retrieve_future timeout
MAX_FUTURES = 20000
RETRIEVED_GRACE_S = 120.0  # a retrieved result stays this long, for a client whose answer got lost or that asks twice (the cookbook under load did)
CANCELLED = "cancelled by the client (cancel_future)"


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
    cancellable: bool = True
    cancelled: bool = False
    owner: str | None = None  # the API key's owner id that made it (several keys only)
    size: int = 0  # bytes of result held (payload, or the JSON body's encoded size)
    on_finish: Callable[["FutureRecord"], None] | None = field(default=None, repr=False)

    def finish(self, *, latency_s: float, payload: bytes | None = None, json_body: dict | None = None,
               error: str | None = None, category: str = "server") -> None:
        if self.event.is_set():  # cancelled while it ran: the first answer stands
            return
        self.payload, self.json_body, self.error, self.category = payload, json_body, error, category
        if payload is not None:
            self.size = len(payload)
        elif json_body:
            self.size = len(json.dumps(json_body))
        else:
            self.size = len(error or "")
        self.ready_at = time.monotonic() + latency_s
        self.event.set()
        if self.on_finish is not None:
            self.on_finish(self)

    def drop_result(self) -> None:
        self.payload = self.json_body = None
        self.size = 0


class FutureTable:
    """Futures by request id; finished ones expire (see the module docstring)."""

    def __init__(self, result_ttl_s: float = 600.0, retrieved_grace_s: float = RETRIEVED_GRACE_S) -> None:
        self.result_ttl_s = float(result_ttl_s)
        self.retrieved_grace_s = min(float(retrieved_grace_s), self.result_ttl_s)  # never longer than an unretrieved one
        self._lock = threading.Lock()
        self._futures: "OrderedDict[str, FutureRecord]" = OrderedDict()
        self._expiry: dict[str, float] = {}  # finished request id -> when it is dropped
        self._heap: list[tuple[float, str]] = []  # (expiry, id); stale entries skipped when popped
        self._retained_bytes = 0

    def new(self, model_id: str | None, cancellable: bool = True, owner: str | None = None) -> FutureRecord:
        rec = FutureRecord(request_id=uuid.uuid4().hex, model_id=model_id, cancellable=cancellable, owner=owner,
                           on_finish=self._finished)
        with self._lock:
            self._sweep(time.monotonic())
            self._futures[rec.request_id] = rec
            while len(self._futures) > MAX_FUTURES:
                _, old = self._futures.popitem(last=False)
                self._forget(old)
        return rec

    # ---- expiry (callers hold the lock) -------------------------------------------------
    def _finished(self, rec: FutureRecord) -> None:
        with self._lock:
            if self._futures.get(rec.request_id) is not rec:
                return
            self._retained_bytes += rec.size
            self._expire_at(rec.request_id, time.monotonic() + self.result_ttl_s)

    def _expire_at(self, request_id: str, when: float) -> None:
        current = self._expiry.get(request_id)
        if current is not None and current <= when:
            return
        self._expiry[request_id] = when
        heapq.heappush(self._heap, (when, request_id))

    def _forget(self, rec: FutureRecord) -> None:
        if self._expiry.pop(rec.request_id, None) is not None:
            self._retained_bytes -= rec.size
        rec.drop_result()

    def _sweep(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            when, rid = heapq.heappop(self._heap)
            if self._expiry.get(rid) != when:
                continue  # superseded by an earlier expiry
            rec = self._futures.pop(rid, None)
            if rec is not None:
                self._forget(rec)
            else:
                self._expiry.pop(rid, None)

    # ---- the protocol ---------------------------------------------------------------
    def _get(self, request_id: str) -> FutureRecord:
        with self._lock:
            self._sweep(time.monotonic())
            rec = self._futures.get(request_id)
        if rec is None:
            raise RequestError(404, f"unknown request_id {request_id!r} (futures are kept in server memory until "
                                    "retrieved or past their TTL; was the server restarted, or was it retrieved already?)")
        return rec

    def wait(self, request_id: str, timeout: float = LONG_POLL_S) -> FutureRecord | None:
        """The finished record, or None when still pending after ``timeout`` (long poll).

        Returning a record counts as retrieving it: it is dropped after the grace period.
        """
        rec = self._get(request_id)
        deadline = time.monotonic() + timeout
        if not rec.event.wait(timeout):
            return None
        delay = rec.ready_at - time.monotonic()
        if delay > 0:
            if time.monotonic() + delay > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return None
            time.sleep(delay)
        with self._lock:
            if rec.request_id in self._expiry:
                self._expire_at(rec.request_id, time.monotonic() + self.retrieved_grace_s)
        return rec

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued (or running) request; False when it had already finished or cannot be cancelled."""
        rec = self._get(request_id)
        if rec.event.is_set() or not rec.cancellable:
            return False
        rec.cancelled = True
        rec.finish(latency_s=0.0, error=CANCELLED, category="user")
        return True

    def owner_of(self, request_id: str) -> str | None:
        with self._lock:
            rec = self._futures.get(request_id)
        return rec.owner if rec is not None else None

    def pending(self) -> int:
        with self._lock:
            return sum(1 for f in self._futures.values() if not f.event.is_set())

    def retained(self) -> tuple[int, int]:
        """(finished results held, their bytes), after dropping the expired ones."""
        with self._lock:
            self._sweep(time.monotonic())
            return len(self._expiry), self._retained_bytes
