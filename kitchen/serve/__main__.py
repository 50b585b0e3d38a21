"""``python -m kitchen.serve``: run the Tinker-compatible server.

The API key is read from an environment variable (``--api-key-env``, default
KITCHEN_SERVE_API_KEY then TINKER_API_KEY), never from the command line, so it does
not show in ``ps``. With no key set, one is generated and printed once.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kitchen.serve", description="Serve the Tinker training/sampling API from a local kitchen backend.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = pick a free one; see --ready-file)")
    p.add_argument("--api-key-env", default=None, help="environment variable holding the API key (default: KITCHEN_SERVE_API_KEY, then TINKER_API_KEY)")
    p.add_argument("--backend", default="local", choices=["local", "noop"], help="local = real torch training; noop = instant fake training")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay every future's result by this much (simulates a remote service)")
    p.add_argument("--faults", default=None, help="fault injection, e.g. forward_backward:503:2,optim_step:stall:1 (or env KITCHEN_SERVE_FAULTS)")
    p.add_argument("--stall-s", type=float, default=None, help="how long a 'stall' fault holds a request (default 30, env KITCHEN_SERVE_STALL_S)")
    p.add_argument("--state-dir", default=None, help="where checkpoints and tokenizers go (default: a fresh temp dir)")
    p.add_argument("--ready-file", default=None, help="write {host, port, base_url, pid} as JSON here once listening")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from kitchen.errors import KitchenError
    from kitchen.serve.app import run_server
    from kitchen.serve.faults import FaultSpecError

    try:
        run_server(host=args.host, port=args.port, backend=args.backend, latency_ms=args.latency_ms, faults=args.faults,
                   ready_file=args.ready_file, state_dir=args.state_dir, stall_s=args.stall_s, api_key_env=args.api_key_env)
    except (KitchenError, FaultSpecError, OSError) as exc:
        print(f"kitchen serve: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
