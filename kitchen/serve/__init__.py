"""``kitchen serve``: a local Tinker-compatible server (see :mod:`kitchen.serve.app`; the process is :mod:`kitchen.serve.server`)."""

from __future__ import annotations

from typing import Any


def run_server(opts: Any) -> int:
    """Serve with validated :class:`kitchen.serve.options.ServeOptions` (imports the server lazily)."""
    from kitchen.serve.server import run_server as _run

    return _run(opts)


__all__ = ["run_server"]
