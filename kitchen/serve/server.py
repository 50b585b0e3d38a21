"""The ``kitchen serve`` process: uvicorn's configuration, signal handling, start-up and drain.

Shutdown (SIGTERM or SIGINT) is bounded by ``--shutdown-timeout-s``, counted from the
signal: new work is refused at once (503), uvicorn stops accepting connections and
finishes the HTTP requests in progress, queued work is cancelled (its futures answer a
shutdown error), and running work gets what is left of the bound. Everything a client
was told exists is on disk before its future finishes, so there is nothing else to
persist. If a worker is still inside the model when the bound passes (a long sample:
the backends' loops have no cancellation point), the process exits 0 with
``os._exit`` after flushing its logs: letting the interpreter finalize under a thread
that is running torch code is what aborted with "terminate called without an active
exception" (exit -6).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

from kitchen.io.atomic import atomic_write_json


def run_server(opts: Any) -> int:
    """Serve until SIGTERM/SIGINT, then finish queued work, persist, and return 0.

    ``opts`` is a validated :class:`~kitchen.serve.options.ServeOptions`; ``port=0`` picks
    a free port; the address is printed and, with ``ready_file``, written as JSON there.
    """
    import uvicorn

    from kitchen.serve.app import build_app
    from kitchen.serve.connection_guard import ConnectionTable, fit_to_file_limit, guarded_protocol
    from kitchen.serve.http import Limits, build_asgi
    from kitchen.serve.metrics import ServeMetrics, state_gauges
    from kitchen.serve.model_names import check_models
    from kitchen.serve.options import configure_logging

    configure_logging(opts.log_level)
    check_models(opts.backend, opts.models)
    sock = opts.bind()
    app = build_app(opts)
    limits = Limits(max_body_bytes=int(opts.max_body_mb * 1024 * 1024), max_decompression_ratio=opts.max_decompression_ratio,
                    read_timeout_s=opts.read_timeout_s, workers=opts.workers,
                    max_json_bytes=int(opts.max_json_body_mb * 1024 * 1024),
                    max_user_metadata_bytes=int(opts.max_user_metadata_kb * 1024))
    # Connection limits live in the protocol (kitchen.serve.connection_guard), where a
    # connection without the key can be closed to make room for one with it; uvicorn's
    # own limit_concurrency counted every open socket, idle and 401-ed ones included, and
    # answered everyone 503 past it. Work is bounded by the worker pools in http.py.
    connections = ConnectionTable(fit_to_file_limit(opts.max_connections), opts.max_connections_per_client)
    protocol = guarded_protocol(opts.header_timeout_s, max_head_bytes=int(opts.max_header_kb * 1024),
                                max_headers=opts.max_headers, connections=connections)
    asgi = build_asgi(app, limits, ServeMetrics(state_gauges(app.state)), connections=connections)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"
    app.context.public_url = opts.public_url or url
    config = uvicorn.Config(asgi, log_config=None, access_log=False, timeout_keep_alive=int(max(1, opts.idle_timeout_s)),
                            limit_concurrency=None, timeout_graceful_shutdown=max(1, int(opts.shutdown_timeout_s)),
                            lifespan="off", server_header=False, http=protocol)
    signalled: list[float] = []

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not signalled:
                signalled.append(time.monotonic())
                app.state.stopping = True  # no new work from here on (503)
            super().handle_exit(sig, frame)

    server = _Server(config)
    # uvicorn re-raises a captured SIGTERM/SIGINT after its graceful shutdown; with these
    # handlers that re-raise is harmless, so we get to drain and exit 0.
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopped.append(signum))
    print(f"kitchen serve: listening on {url} (backend={opts.backend}, models={', '.join(app.models.values())}, "
          f"state_dir={app.state.root}, latency_ms={opts.latency_ms:g}"
          + (f", faults={app.faults.rules}" if app.faults else "") + ")", flush=True)
    if opts.ready_file:
        atomic_write_json(opts.ready_file, {"host": host, "port": port, "base_url": url, "pid": os.getpid()}, indent=None)
    try:
        server.run(sockets=[sock])
    finally:
        start = signalled[0] if signalled else time.monotonic()
        left = max(0.0, start + opts.shutdown_timeout_s - time.monotonic())
        print(f"kitchen serve: stopping; cancelling queued work, {left:.1f}s left for running work "
              "(--shutdown-timeout-s)", file=sys.stderr, flush=True)
        clean = app.state.shutdown(drain_s=left, cancel_queued=True)
        if not clean:
            print(f"kitchen serve: stopped with work still running after --shutdown-timeout-s "
                  f"{opts.shutdown_timeout_s:g}; exiting without waiting for it", file=sys.stderr, flush=True)
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)
        print("kitchen serve: stopped", file=sys.stderr, flush=True)
    return 0
