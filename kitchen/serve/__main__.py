"""``python -m kitchen.serve``: run the Tinker-compatible server (same options as ``kitchen serve``).

The API key is read from an environment variable (``--api-key-env``, default
KITCHEN_SERVE_API_KEY then TINKER_API_KEY), never from the command line, so it does
not show in ``ps``. With no key set, one is generated and printed once.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from kitchen.serve.options import ServeOptions

    d = ServeOptions()
    p = argparse.ArgumentParser(prog="python -m kitchen.serve", description="Serve the Tinker training/sampling API from a local kitchen backend.")
    p.add_argument("--host", default=d.host, help="interface to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=d.port, help="port (0 = pick a free one; see --ready-file)")
    p.add_argument("--api-key-env", default=None, help="environment variable holding the API key (default: KITCHEN_SERVE_API_KEY, then TINKER_API_KEY)")
    p.add_argument("--api-key-file", default=None,
                   help="several API keys, one per line; each client sees only the sessions, models, checkpoints and "
                        "exports its key created (others get 404)")
    p.add_argument("--backend", default=d.backend, help="local = real torch training; noop = instant fake training")
    p.add_argument("--model", action="append", default=[], help="a model to serve (repeatable; default: SmolLM2-135M-Instruct and tiny-llama)")
    p.add_argument("--latency-ms", type=float, default=d.latency_ms, help="delay every future's result by this much (simulates a remote service)")
    p.add_argument("--faults", default=None, help="fault injection, e.g. forward_backward:503:2,optim_step:stall:1 (or env KITCHEN_SERVE_FAULTS)")
    p.add_argument("--stall-s", type=float, default=None, help="how long a 'stall' fault holds a request (default 30, env KITCHEN_SERVE_STALL_S)")
    p.add_argument("--state-dir", default=None, help="where checkpoints, sampler weights and run metadata persist (default: a fresh temp dir)")
    p.add_argument("--ready-file", default=None, help="write {host, port, base_url, pid} as JSON here once listening")
    p.add_argument("--log-level", default=d.log_level, help="DEBUG, INFO (one access line per request), WARNING, ERROR")
    p.add_argument("--max-loaded-samplers", type=int, default=d.max_loaded_samplers, help="sampler weight sets kept in memory (LRU; the rest stay on disk)")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help="largest request body accepted (413 beyond)")
    p.add_argument("--max-decompression-ratio", type=float, default=d.max_decompression_ratio, help="largest zstd expansion accepted (413 beyond)")
    p.add_argument("--workers", type=int, default=d.workers, help="threads answering requests (bounded pool)")
    p.add_argument("--read-timeout-s", type=float, default=d.read_timeout_s, help="time allowed to send a request body (408 beyond)")
    p.add_argument("--idle-timeout-s", type=float, default=d.idle_timeout_s, help="idle keep-alive connections are closed after this")
    p.add_argument("--header-timeout-s", type=float, default=d.header_timeout_s, help="a connection must send its request head (line and headers) within this, else it is closed")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections in total; at the limit the oldest idle connection without the API key is closed "
                        "to make room (default %(default)s)")
    p.add_argument("--max-connections-per-client", type=int, default=d.max_connections_per_client,
                   help="open connections per client address, same rule (default %(default)s)")
    p.add_argument("--max-headers", type=int, default=d.max_headers, help="header lines per request (431 beyond; default %(default)s)")
    p.add_argument("--max-header-kb", type=float, default=d.max_header_kb,
                   help="size of a request head, request line and headers (431 beyond; default %(default)s)")
    p.add_argument("--precision", default=d.precision,
                   help="local backend: fp32 (default), bf16 or auto, for clients that do not send their own (kitchen's adapter does)")
    p.add_argument("--max-sample-tokens-per-request", type=int, default=d.max_sample_tokens_per_request,
                   help="num_samples x (prompt + max_tokens) one asample may ask for (400 beyond; default %(default)s)")
    p.add_argument("--max-sample-tokens-in-flight", type=int, default=d.max_sample_tokens_in_flight,
                   help="the same count over all queued and running samples (429 beyond; default %(default)s)")
    p.add_argument("--result-ttl-s", type=float, default=d.result_ttl_s,
                   help="a finished result nobody retrieves is dropped after this (retrieved ones after 10 s; default %(default)s)")
    p.add_argument("--max-user-metadata-kb", type=float, default=d.max_user_metadata_kb,
                   help="size of a request's user_metadata as JSON (400 beyond; default %(default)s)")
    p.add_argument("--max-json-body-mb", type=float, default=d.max_json_body_mb,
                   help="largest JSON request body, after decompression (413 beyond; protobuf bodies use --max-body-mb; "
                        "default %(default)s)")
    p.add_argument("--max-models-per-session", type=int, default=d.max_models_per_session,
                   help="training models one session may create (400 beyond; default %(default)s)")
    p.add_argument("--max-models", type=int, default=d.max_models,
                   help="training models in memory on the server (429 beyond; default %(default)s)")
    p.add_argument("--shutdown-timeout-s", type=float, default=d.shutdown_timeout_s,
                   help="on SIGTERM, how long running work may take before the server exits anyway (default %(default)s)")
    p.add_argument("--public-url", default=None,
                   help="http(s)://HOST[:PORT] that signed download URLs name (default: the bind address; never the "
                        "request's Host header)")
    args = p.parse_args(argv)
    from kitchen.errors import KitchenError

    opts = ServeOptions(host=args.host, port=args.port, backend=args.backend, models=args.model, state_dir=args.state_dir,
                        latency_ms=args.latency_ms, faults=args.faults, stall_s=args.stall_s, ready_file=args.ready_file,
                        api_key_env=args.api_key_env, api_key_file=args.api_key_file, log_level=args.log_level, max_loaded_samplers=args.max_loaded_samplers,
                        max_body_mb=args.max_body_mb, max_decompression_ratio=args.max_decompression_ratio, workers=args.workers,
                        read_timeout_s=args.read_timeout_s, idle_timeout_s=args.idle_timeout_s,
                        header_timeout_s=args.header_timeout_s, max_connections=args.max_connections,
                        max_connections_per_client=args.max_connections_per_client, max_headers=args.max_headers,
                        max_header_kb=args.max_header_kb, precision=args.precision,
                        max_sample_tokens_per_request=args.max_sample_tokens_per_request,
                        max_sample_tokens_in_flight=args.max_sample_tokens_in_flight, result_ttl_s=args.result_ttl_s,
                        max_user_metadata_kb=args.max_user_metadata_kb, max_json_body_mb=args.max_json_body_mb,
                        max_models_per_session=args.max_models_per_session, max_models=args.max_models,
                        shutdown_timeout_s=args.shutdown_timeout_s, public_url=args.public_url)
    try:
        opts.validate()
        from kitchen.serve import run_server

        return run_server(opts)
    except KitchenError as exc:
        print(f"kitchen serve: {exc.render()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
