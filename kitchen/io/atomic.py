"""Whole-or-nothing writes: the one implementation every package uses.

A file is written to a temporary sibling, flushed and fsynced, then renamed over the
target, so a reader (or a resumed run after SIGKILL) sees the old contents or the new,
never half of either. On any failure, a full disk included, the temporary file is
removed and the old file is untouched. A directory is published the same way: built
under a temporary sibling, given the modes a plain ``mkdir``/``open`` would have under
the user's umask, fsynced file by file, then renamed into place.

Temporary names start with ``.`` and contain ``.tmp``, so the run-dir sweep at start-up
(``kitchen.runs.rundir``) recognises and removes what a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterator


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name next to ``path`` that no other writer uses (``.NAME.tmp-PID-RANDOM``).

    The random part keeps two threads of one process (``kitchen serve`` writes a run's
    run.json from several) from sharing a temporary file.
    """
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(3)}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some platforms cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, mode: int | None = None) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write by name (a library's ``save(path)``).

    When the block ends cleanly, the file is fsynced and renamed over ``path``; on any
    failure it is removed and ``path`` is untouched. ``mode`` (e.g. 0o600) is set before
    the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        _fsync_file(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", *, encoding: str | None = "utf-8",
                perms: int | None = None) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for a file written whole or not at all (``mode`` "w" or "wb").

    The handle writes a temporary sibling; a clean exit flushes, fsyncs and renames it
    over ``path``, an exception removes it (``path`` keeps its old contents).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path, mode=perms) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if perms is None else perms)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int | None = None) -> None:
    """Write ``path`` whole or not at all; ``mode`` (e.g. 0o600) is set before the rename."""
    with atomic_open(path, "wb", perms=mode) as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str, *, mode: int | None = None) -> None:
    """Write ``path`` (UTF-8) whole or not at all."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: Path | str, obj: Any, *, indent: int | None = 2, mode: int | None = None) -> None:
    """Write ``obj`` as JSON (non-JSON values through ``str``) whole or not at all."""
    text = json.dumps(obj, indent=indent, default=str)
    atomic_write_text(path, text + "\n" if indent is not None else text, mode=mode)


def fsync_tree(path: Path) -> None:
    """fsync every file below ``path``, then ``path`` itself."""
    for root, _dirs, files in os.walk(path):
        for fn in files:
            _fsync_file(Path(root, fn))
    _fsync_dir(path)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_usual_modes(path: Path) -> None:
    """Give a tree the modes a plain ``open``/``mkdir`` would have, under the user's umask.

    Temporary dirs are created 0700, and transformers writes ``model.safetensors`` through a
    0600 temporary file, so without this a published ``final/`` or checkpoint is readable
    only by its owner: a serving process or a teammate in the same group cannot load it.
    """
    mask = _current_umask()
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def atomic_publish_dir(tmp: Path, final: Path, *, replace: bool = True, usual_modes: bool = True) -> None:
    """Publish the finished directory ``tmp`` as ``final`` in one rename.

    The tree is given the usual modes (unless ``usual_modes=False``, for private state)
    and fsynced first. An existing ``final`` is swapped out and removed when ``replace``;
    otherwise ``tmp`` is discarded and ``final`` kept. ``tmp`` never survives a failure.
    """
    tmp, final = Path(tmp), Path(final)
    try:
        if usual_modes:
            give_usual_modes(tmp)
        fsync_tree(tmp)
        if final.exists():
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = temp_sibling(final, "old")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
