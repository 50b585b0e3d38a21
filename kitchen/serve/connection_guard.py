"""A deadline for the request head: uvicorn's HTTP protocol, plus a slow-header timeout.

Why: uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but not a
request head. A new connection that sends nothing is never closed, and any byte that
arrives cancels the keep-alive timer, so a client that trickles a header byte every few
seconds (slowloris) holds its connection, and a slot of ``limit_concurrency``, forever.
Read timeouts for the *body* live in the ASGI app (:mod:`kitchen.serve.http`); the head
is parsed before the app sees anything, so its deadline has to live in the protocol.

The deadline starts when a connection opens and when the first byte of a further
request on a kept-alive connection arrives; it is met when the head is complete (the
protocol has started a new request cycle). A connection that misses it is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger("kitchen.serve")


def head_deadline_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools, else h11) closing connections whose
    request head is not complete within ``header_timeout_s`` seconds."""

    class HeadDeadlineProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_after: Any = None  # the request cycle that was current when the deadline was armed

        def _arm(self) -> None:
            self._waiting_after = self.cycle
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_deadline)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_deadline(self) -> None:
            self._head_timer = None
            if self.cycle is not self._waiting_after:
                return  # a request head arrived in time; its body has its own timeout
            if not self.transport.is_closing():
                client = "%s:%d" % self.client if self.client else "-"
                log.info("closing %s: request head not complete within %gs", client, header_timeout_s)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self.cycle is not None and self.cycle.response_complete:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._waiting_after:
                self._disarm()  # the head is complete

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadlineProtocol
