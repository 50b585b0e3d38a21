"""The ``kitchen serve`` process: uvicorn's configuration, signal handling, start-up and drain."""

from __future__ import annotations

import os
import signal
import sys
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
                            limit_concurrency=None, timeout_graceful_shutdown=30,
                            lifespan="off", server_header=False, http=protocol)
    server = uvicorn.Server(config)
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
        print("kitchen serve: stopping; finishing queued work", file=sys.stderr, flush=True)
        app.state.shutdown(drain_s=60.0)
        print("kitchen serve: stopped", file=sys.stderr, flush=True)
    return 0
