"""uvicorn's HTTP protocol, guarded: a request-head deadline, head size limits, connection limits.

Why: uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but not a
request head. A new connection that sends nothing is never closed, and any byte that
arrives cancels the keep-alive timer, so a client that trickles a header byte every few
seconds (slowloris) holds its connection forever. Read timeouts for the *body* live in
the ASGI app (:mod:`kitchen.serve.http`); the head is parsed before the app sees
anything, so its guards have to live in the protocol:

- **deadline**: it starts when a connection opens and when the first byte of a further
  request on a kept-alive connection arrives; it is met when the head is complete (the
  protocol has started a new request cycle). A connection that misses it is closed.
- **head size**: a head over ``max_head_bytes`` or with more than ``max_headers`` lines
  is answered 431 and the connection closed, counted on the raw bytes *before* the
  parser sees them (the parser builds a header value by concatenating its pieces, so a
  huge value used to cost quadratic time and gigabytes of memory).
- **connections**: at most ``max_connections`` in total and ``max_per_client`` per
  client address. A connection counts as *authenticated* once one of its requests
  passed the API-key check (:meth:`ConnectionTable.authenticated`). When a limit is
  reached, the oldest idle unauthenticated connection (of that address, for the
  per-address limit) is closed to make room; only when there is none is the new
  connection refused. So idle or 401-ing sockets, however many, never lock out a client
  with the key (uvicorn's own ``limit_concurrency`` used to count them and answer
  everyone else 503).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger("kitchen.serve")


class ConnectionTable:
    """The open connections (shared by every protocol instance of one server)."""

    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.max_connections = int(max_connections)
        self.max_per_client = int(max_per_client)
        self._by_peer: dict[Any, Any] = {}  # (host, port) -> protocol, in the order they connected
        self._per_host: dict[str, int] = {}
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._by_peer)

    def _victim(self, host: str | None) -> Any:
        for proto in self._by_peer.values():  # oldest first
            if proto.kitchen_authenticated or (host is not None and proto.client_host != host):
                continue
            if proto.cycle is not None and not proto.cycle.response_complete:
                continue  # a request in progress (its key is not checked yet, or it is a 401 on its way)
            return proto
        return None

    def admit(self, proto: Any) -> bool:
        host = proto.client_host
        while self._per_host.get(host, 0) >= self.max_per_client or len(self._by_peer) >= self.max_connections:
            per_host = self._per_host.get(host, 0) >= self.max_per_client
            victim = self._victim(host if per_host else None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            self.remove(victim)
            victim.transport.close()
        self._by_peer[proto.client] = proto
        self._per_host[host] = self._per_host.get(host, 0) + 1
        return True

    def remove(self, proto: Any) -> None:
        if self._by_peer.get(proto.client) is proto:
            del self._by_peer[proto.client]
            n = self._per_host.get(proto.client_host, 1) - 1
            if n > 0:
                self._per_host[proto.client_host] = n
            else:
                self._per_host.pop(proto.client_host, None)

    def authenticated(self, client: Any) -> None:
        """A request from ``client`` ((host, port)) presented the right key."""
        proto = self._by_peer.get(tuple(client) if client else None)
        if proto is not None:
            proto.kitchen_authenticated = True


def _431(message: str) -> bytes:
    body = json.dumps({"error": message, "status": 431}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


def guarded_protocol(header_timeout_s: float, *, max_head_bytes: int = 64 * 1024, max_headers: int = 100,
                     connections: ConnectionTable | None = None) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools, else h11) with the guards above."""

    class GuardedProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_after: Any = None  # the request cycle that was current when the deadline was armed
        _head_bytes = 0
        _head_lines = 0
        _tail = b""
        _refused = False
        kitchen_authenticated = False
        client_host: str | None = None

        def _arm(self) -> None:
            self._waiting_after = self.cycle
            self._head_bytes = self._head_lines = 0
            self._tail = b""
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
            self.client_host = self.client[0] if self.client else None
            if connections is not None and not connections.admit(self):
                self._refused = True
                log.info("refusing a connection from %s: connection limits reached "
                         "(--max-connections %d, --max-connections-per-client %d) and none to close is idle and unauthenticated",
                         self.client_host, connections.max_connections, connections.max_per_client)
                transport.close()
                return
            self._arm()

        def _head_too_big(self, data: bytes) -> bool:
            """Count the head's bytes and lines in ``data``; True (431 sent) when over a limit."""
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            head = data if end < 0 else window[len(self._tail):end + 4]
            self._head_bytes += len(head)
            self._head_lines += head.count(b"\n")
            self._tail = window[-3:]
            # lines ended so far: the request line, the header lines and, once complete, the blank line
            too_many = self._head_lines > max_headers + (2 if end >= 0 else 1)
            if self._head_bytes > max_head_bytes or too_many:
                what = f"more than {max_headers} header lines" if too_many else f"more than {max_head_bytes} bytes"
                client = "%s:%d" % self.client if self.client else "-"
                log.info("closing %s: request head has %s (431)", client, what)
                self._disarm()
                self.transport.write(_431(f"request head has {what}; kitchen serve accepts at most {max_headers} header "
                                          f"lines and {max_head_bytes} bytes (--max-headers, --max-header-kb)"))
                self.transport.close()
                return True
            return False

        def data_received(self, data: bytes) -> None:
            if self._refused or self.transport.is_closing():
                return
            if self._head_timer is None and self.cycle is not None and self.cycle.response_complete:
                self._arm()  # the first byte of the next request on a kept-alive connection
            if self._head_timer is not None and self._head_too_big(data):
                return
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._waiting_after:
                self._disarm()  # the head is complete

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if connections is not None:
                connections.remove(self)
            super().connection_lost(exc)

    return GuardedProtocol


def fit_to_file_limit(max_connections: int, reserve: int = 64) -> int:
    """``max_connections``, lowered to what the process's open-file limit allows.

    Raises the soft ``RLIMIT_NOFILE`` towards the hard one when it is too low; if even
    that is not enough, returns the limit minus ``reserve`` (for model files, logs,
    the state dir) and logs a warning: running out of file descriptors would make
    the listening socket stop accepting, for everyone.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(1, soft - reserve)
        log.warning("--max-connections %d lowered to %d: the open-file limit is %d (ulimit -n)", max_connections, fitted, soft)
        return fitted
    return max_connections


def head_deadline_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol with the head deadline and the default head limits, no connection limits."""
    return guarded_protocol(header_timeout_s)
