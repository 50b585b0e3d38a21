"""The errors and name rules every part of ``kitchen serve`` shares.

Why a module of its own: the state, the snapshot store and the external-weights store
all raise :class:`RequestError` and check checkpoint names; keeping them here lets each
depend on this small leaf instead of on each other (that used to be an import cycle).
"""

from __future__ import annotations

import re


class RequestError(Exception):
    """Answered as an HTTP error with a JSON message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers  # e.g. Retry-After on a 429


def safe_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9._-]`` replaced, for a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


# One rule for checkpoint names at save and at load: a name that saves always loads.
CHECKPOINT_NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_checkpoint_name(name: str, what: str = "checkpoint name") -> None:
    if not isinstance(name, str) or not CHECKPOINT_NAME_RULE.fullmatch(name):
        raise RequestError(400, f"{what} {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit (no spaces, ':' or '/')")
