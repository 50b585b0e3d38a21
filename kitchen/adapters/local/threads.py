"""CPU threads of the local backend: the ``threads`` option checked, and the default count.

Its own module (not the package ``__init__`` or the client) so that the client, the
scale plan and the package's torch-free preflight can all use it without importing
each other.
"""

from __future__ import annotations

import os
from typing import Any


def check_threads(threads: Any) -> int | None:
    """``threads``: None/0 = every core; otherwise a positive integer."""
    from kitchen.errors import ConfigError

    if threads is None or threads == 0:
        return None
    try:
        value = int(threads)
        ok = value > 0 and float(threads) == value
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"adapters.training.threads={threads!r} is not allowed: give a positive number of CPU threads "
            "(or 0 / leave it unset to use every core this process may use)."
        )
    return value


def default_threads() -> int:
    """Every core this process may use (its CPU affinity on Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)
