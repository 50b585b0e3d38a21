"""A full disk is a user problem with a clear fix, not a crash.

Writes that run out of space (``ENOSPC``, or ``EDQUOT`` for a quota) surface as a
:class:`DiskFullError`: one paragraph naming the file being written, the bytes free on
its filesystem and, where the writer knows it, the bytes the write needed. The run
then ends like any user error (exit 2), its earlier checkpoints untouched, so it can be
resumed once space is freed.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from kitchen.errors import KitchenError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(KitchenError):
    """A write ran out of disk space (or quota)."""


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is an out-of-space error."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes available on the filesystem holding ``path`` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({n} bytes)"
        size /= 1024
    return f"{n} bytes"


def disk_full_error(exc: BaseException, *, path: str | os.PathLike[str], needed: int | None = None,
                    after: str = "") -> DiskFullError:
    """The one-paragraph error for an out-of-space ``exc`` raised while writing under ``path``."""
    if isinstance(exc, DiskFullError):
        return exc
    inner: BaseException | None = exc
    while inner is not None and not (isinstance(inner, OSError) and inner.errno in NO_SPACE):
        inner = inner.__cause__ or inner.__context__
    target = getattr(inner, "filename", None) or str(path)
    needed = needed or getattr(inner, "needed", None)  # set by writers that know (JsonlSink)
    free = free_bytes(target)
    need = f" This write needs about {_human(needed)}." if needed else ""
    have = f" {_human(free)} are free there." if free is not None else ""
    kind = "disk quota" if isinstance(inner, OSError) and inner.errno == errno.EDQUOT else "disk space"
    return DiskFullError(f"Out of {kind} while writing {target}.{have}{need}{(' ' + after) if after else ''}")


def ensure_space(path: str | os.PathLike[str], needed: int, what: str) -> None:
    """Refuse a write of ``needed`` bytes under ``path`` up front when it cannot fit.

    Cheaper and clearer than failing half-way: nothing is written, and the message can
    say exactly how much is missing.
    """
    free = free_bytes(path)
    if free is not None and free < needed:
        raise DiskFullError(
            f"Out of disk space for {what} at {path}: it needs about {_human(needed)} but only "
            f"{_human(free)} are free there."
        )


__all__ = ["NO_SPACE", "DiskFullError", "disk_full_error", "ensure_space", "free_bytes", "is_disk_full"]
