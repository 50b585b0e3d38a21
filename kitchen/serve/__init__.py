"""``kitchen serve``: a local Tinker-compatible server (see :mod:`kitchen.serve.app`)."""

from __future__ import annotations

from typing import Any


def run_server(*args: Any, **kwargs: Any) -> None:
    from kitchen.serve.app import run_server as _run

    _run(*args, **kwargs)


def make_server(*args: Any, **kwargs: Any) -> Any:
    from kitchen.serve.app import make_server as _make

    return _make(*args, **kwargs)


__all__ = ["run_server", "make_server"]
