"""The HTTP layer of ``kitchen serve``: Starlette on uvicorn, guarded.

Why not the standard library's ``ThreadingHTTPServer`` any more: it read and
decompressed a body before checking the key, had no body limit and no timeouts, and
held one thread per connection. Here every request goes through one guarded path:

1. the API key is checked from the headers, before a byte of body is read (the one
   exception, a GET of an external weights file, is authorised by its URL's own
   signature: :mod:`kitchen.serve.external`);
2. the route is resolved (an unknown endpoint is a 404 with a message, body unread);
3. ``Content-Length`` is parsed (400 when it is not a number) and checked against the
   body limit (413), then the body is streamed with the same limit (chunked uploads)
   under a read timeout (408);
4. a zstd body is decompressed through a bounded reader: more than
   ``max_decompression_ratio`` times its compressed size, or the body limit, is a 413;
5. the endpoint runs in a bounded worker pool (long polls in a pool of their own, so
   waiting clients cannot starve work), and every client error is a 4xx with a
   one-line JSON ``{"error": ..., "status": ...}``; a 500 means a kitchen bug and its
   traceback goes to the log, never to the client.

One access-log line per request at INFO (``kitchen.serve.access``): client, method,
path, status, milliseconds; never a header, a body or a query string (where download
signatures travel). ``/metrics`` (Prometheus text,
behind the same key) counts requests and latencies per endpoint and status, and
reports sessions, models, loaded samplers and the process's memory.
"""

from __future__ import annotations

import io
import json
import logging
import time
import traceback
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from kitchen.serve.errors import RequestError
from kitchen.serve.external import FILES_PREFIX

log = logging.getLogger("kitchen.serve")
access_log = logging.getLogger("kitchen.serve.access")

PROTO = "application/x-protobuf"
LONG_POLL_ENDPOINTS = {"retrieve_future"}


OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are decompressed and parsed on a worker thread


class Limits:
    def __init__(self, *, max_body_bytes: int, max_decompression_ratio: float, read_timeout_s: float, workers: int,
                 max_json_bytes: int = 16 << 20, max_user_metadata_bytes: int = 64 << 10) -> None:
        self.max_json_bytes = int(max_json_bytes)
        self.max_user_metadata_bytes = int(max_user_metadata_bytes)
        self.max_body_bytes = int(max_body_bytes)
        self.max_decompression_ratio = float(max_decompression_ratio)
        self.read_timeout_s = float(read_timeout_s)
        self.workers = int(workers)


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps({"error": message, "status": status}), status_code=status, media_type="application/json",
                    headers=headers)


async def _read_body(request: Request, limits: Limits) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
            if n < 0:
                raise ValueError
        except ValueError:
            raise RequestError(400, f"Content-Length {declared[:40]!r} is not a non-negative integer") from None
        if n > limits.max_body_bytes:
            raise RequestError(413, f"request body of {n} bytes exceeds the server's limit of {limits.max_body_bytes} bytes "
                                    "(kitchen serve --max-body-mb)")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(limits.read_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise RequestError(413, f"request body exceeds the server's limit of {limits.max_body_bytes} bytes "
                                            "(kitchen serve --max-body-mb)")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"request body not received within {limits.read_timeout_s:g}s") from None
    return b"".join(chunks)


def _decompress(raw: bytes, encoding: str, limits: Limits) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return raw
    if encoding != "zstd":
        raise RequestError(415, f"Content-Encoding {encoding!r} is not supported; send identity or zstd")
    import zstandard

    cap = int(min(limits.max_body_bytes, max(1024, len(raw) * limits.max_decompression_ratio)))
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
            out = reader.read(cap + 1)
            while len(out) <= cap:  # read() may return early; keep going up to cap + 1
                more = reader.read(cap + 1 - len(out))
                if not more:
                    break
                out += more
    except zstandard.ZstdError as exc:
        raise RequestError(400, f"request body is not valid zstd: {exc}") from None
    if len(out) > cap:
        raise RequestError(413, f"zstd body expands beyond {cap} bytes (over {limits.max_decompression_ratio:g}x its "
                                "compressed size or the body limit); refusing to decompress it")
    return out


def _parse_body(raw: bytes, content_type: str, limits: Limits) -> Any:
    """The body as the endpoint gets it: protobuf bytes as they are, JSON parsed, with the
    JSON size limit and the ``user_metadata`` size limit (it is copied into run.json and
    answered back on every listing, so a 200 MB one used to cost that on every call)."""
    if PROTO in content_type.lower():
        return raw
    if not raw:
        return {}
    if len(raw) > limits.max_json_bytes:
        raise RequestError(413, f"JSON request body of {len(raw)} bytes exceeds the server's limit of {limits.max_json_bytes} "
                                "bytes (kitchen serve --max-json-body-mb)")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise RequestError(400, "request body is JSON nested too deeply") from None
    except ValueError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    md = body.get("user_metadata") if isinstance(body, dict) else None
    if md:
        size = len(json.dumps(md))
        if size > limits.max_user_metadata_bytes:
            raise RequestError(400, f"user_metadata is {size} bytes as JSON, over the server's limit of "
                                    f"{limits.max_user_metadata_bytes} bytes (kitchen serve --max-user-metadata-kb)")
    return body


def _decode_body(raw: bytes, encoding: str, content_type: str, limits: Limits) -> Any:
    return _parse_body(_decompress(raw, encoding, limits), content_type, limits)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "-"


def _printable(text: str) -> str:
    """``text`` with control characters escaped (``\x1b``, ``\x00``, ...), for a log line:
    a request path is the client's, and a raw ESC sequence in it would drive the terminal
    of whoever reads the log (or forge a line with a newline)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization") or ""
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def build_asgi(app: Any, limits: Limits, metrics: Any, connections: Any = None) -> Starlette:
    """The ASGI application for a :class:`kitchen.serve.app.TinkerApp`.

    ``connections`` (a :class:`~kitchen.serve.connection_guard.ConnectionTable`) is told
    which connections presented the right key, so they are never closed to make room.
    """
    work = anyio.CapacityLimiter(limits.workers)
    polls = anyio.CapacityLimiter(max(64, 8 * limits.workers))

    async def handle(request: Request) -> Response:
        t0 = time.perf_counter()
        method, path = request.method, request.url.path
        endpoint = "unknown"
        status = 500
        try:
            response = await _dispatch(request, method, path)
            endpoint = getattr(request.state, "endpoint", endpoint)
            status = response.status_code
            return response
        except RequestError as exc:
            endpoint = getattr(request.state, "endpoint", endpoint)
            status = exc.status
            return _json_error(exc.status, exc.message, exc.headers)
        except ClientDisconnect:
            # the client went away while sending its body: nobody to answer, nothing broken
            endpoint = getattr(request.state, "endpoint", endpoint)
            status = 499
            log.info("client %s disconnected while sending %s %s", _client(request), method, _printable(path))
            return Response(b"", status_code=400)
        except Exception as exc:  # noqa: BLE001 - a kitchen bug: the client gets a message, the log the traceback
            endpoint = getattr(request.state, "endpoint", endpoint)
            log.error("internal error on %s %s: %s\n%s", method, path, exc, traceback.format_exc())
            return _json_error(500, f"internal server error: {type(exc).__name__}")
        finally:
            elapsed = time.perf_counter() - t0
            metrics.observe(endpoint, status, elapsed)
            access_log.info('%s "%s %s" %d %.1fms', _client(request), _printable(method), _printable(path), status,
                            elapsed * 1000)

    async def _dispatch(request: Request, method: str, path: str) -> Response:
        if method == "GET" and path.startswith(FILES_PREFIX):  # a signed URL is its own authorisation
            request.state.endpoint = "external_weights_file"
            target = await anyio.to_thread.run_sync(app.external.file_for, path, dict(request.query_params), limiter=work)
            return FileResponse(target, media_type="application/octet-stream")
        owner = app.check_key(_presented_key(request))  # before any byte of the body
        if connections is not None and request.client:
            connections.authenticated((request.client.host, request.client.port))
        if path.rstrip("/") == "/metrics":
            request.state.endpoint = "metrics"
            body, ctype = metrics.render()
            return Response(body, media_type=ctype)
        handler, endpoint = app.route(method, path, dict(request.query_params), base_url=str(request.base_url), owner=owner)
        request.state.endpoint = endpoint
        raw = await _read_body(request, limits)
        encoding, ctype = request.headers.get("content-encoding", ""), request.headers.get("content-type", "")
        if len(raw) > OFF_LOOP_BYTES:  # a big body would hold every other connection while it is parsed
            body = await anyio.to_thread.run_sync(_decode_body, raw, encoding, ctype, limits, limiter=work)
        else:
            body = _decode_body(raw, encoding, ctype, limits)
        rule = app.faults.take(endpoint) if app.faults else None
        if rule is not None:
            if rule.kind == "stall":
                log.info("fault: stalling %s for %.1fs", endpoint, app.stall_s)
                await anyio.sleep(app.stall_s)
                return Response(b"", status_code=504, headers={"connection": "close"})
            log.info("fault: answering %s with %s", endpoint, rule.status)
            return _json_error(int(rule.status or 503), f"injected fault for {endpoint} (KITCHEN_SERVE_FAULTS)",
                               {"retry-after-ms": "50"})
        limiter = polls if endpoint in LONG_POLL_ENDPOINTS else work
        result = await anyio.to_thread.run_sync(handler, body, limiter=limiter)
        if isinstance(result, Response):
            return result
        if isinstance(result, tuple):
            ctype, payload = result
            return Response(payload, media_type=ctype)
        return Response(json.dumps(result), media_type="application/json")

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])
