"""The run dir's side of a run's lifecycle: what kitchen.runs.execute calls around the engine.

Kept apart from ``app.py`` so each promise has one home:

* the run_dir path itself is usable (not empty, not a file, creatable);
* one live run per folder (:mod:`kitchen.runs.lock`), refused with the holder's pid/host;
* ``resume_from=`` picks a named checkpoint, otherwise the newest complete one;
* temporary files of killed writes are removed at start, with one line saying so;
* run.json keeps one record per attempt; a failed attempt never rewrites an earlier
  completed record, and a run.json that does not fit on a full disk keeps its old contents;
* a full disk is a one-paragraph user error (:mod:`kitchen.runs.diskfull`).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from kitchen.errors import KitchenError, RunDirError
from kitchen.io.secrets import redact_argv, redact_urls
from kitchen.runs.diskfull import DiskFullError, disk_full_error, is_disk_full
from kitchen.runs.lock import RunLock
from kitchen.runs.rundir import RunDir
from kitchen.telemetry.events import RunStatus

# -------------------------------------------------------------------------- run_dir path


def check_run_dir_path(path: Path) -> None:
    """Refuse a run_dir that cannot hold a run, before anything is written or created."""
    if not str(path).strip():
        raise RunDirError("run_dir is empty. Pass run_dir=PATH naming a folder for the run (it is created if missing).")
    absolute = Path(os.path.abspath(path))
    too_long = [part for part in absolute.parts if len(os.fsencode(part)) > 255]
    if too_long or len(os.fsencode(str(absolute))) > 4000:  # checked first: stat() itself fails on these
        name = too_long[0] if too_long else str(absolute)
        raise RunDirError(f"run_dir {str(path)[:60]}...: the name '{name[:40]}...' is {len(os.fsencode(name))} bytes long; "
                          "a file name may have at most 255 bytes (a whole path 4095). Choose a shorter run_dir.")
    if absolute.parts[1:2] in (("proc",), ("sys",), ("dev",)):
        raise RunDirError(f"run_dir {path} lies under /{absolute.parts[1]}, a kernel filesystem that cannot hold a run. "
                          "Choose a folder on a disk.")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run_dir {path} exists and is not a folder. Pass run_dir=PATH naming a folder (new or an earlier run's).")
    parent = absolute
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"run_dir {path} cannot be created: {parent} is a file, not a folder. Choose another run_dir.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"run_dir {path} cannot be written: {parent} is not writable by this user. Choose a folder you can write to.")


# ------------------------------------------------------------------------------- lock


def lock_run_dir(rundir: RunDir, *, resume: bool) -> RunLock:
    """Create the folder and take its lock (RunDirError naming the holder when it is live)."""
    try:
        rundir.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise as_user_error(exc, rundir) from None
        raise RunDirError(f"Cannot create run_dir {rundir.path}: {exc.strerror or exc}.") from None
    try:
        return RunLock(rundir.path).acquire(what="resume this run" if resume else "start a run there")
    except OSError as exc:
        if is_disk_full(exc):
            raise as_user_error(exc, rundir) from None
        raise RunDirError(f"Cannot lock run_dir {rundir.path}: {exc.strerror or exc}. Choose a folder you can write to.") from None


# ---------------------------------------------------------------------------- resume


def resume_record(rundir: RunDir, resume_from: str | None) -> dict[str, Any] | None:
    """The checkpoint a resume starts from: the one ``resume_from`` names, else the newest."""
    if resume_from:
        return rundir.find_checkpoint(resume_from)
    return rundir.last_checkpoint()


def report_leftovers(ctx: Any, rundir: RunDir) -> None:
    """Remove temporaries of killed writes (we hold the lock: no live writer owns them)."""
    from kitchen.telemetry import events as ev

    count, size = rundir.remove_leftovers()
    if count:
        ctx.emit(ev.RUN_INFO, message=f"removed {count} leftover temporary file(s)/folder(s) ({size / 1e6:.1f} MB) "
                                      f"from an earlier interrupted write in {rundir.path}")


# --------------------------------------------------------------------------- run.json


def redacted_argv() -> list[str]:
    return redact_argv(sys.argv[1:])


_ATTEMPT_KEYS = ("status", "started_at", "ended_at", "step", "error", "argv", "pid", "host")


def start_attempt(info: dict[str, Any], *, mode: str, started: float, resume_record: dict[str, Any] | None) -> dict[str, Any]:
    """Append this attempt to ``info['attempts']`` (a run.json from before attempts gets its
    first one reconstructed from its top-level fields) and return it."""
    attempts = [a for a in info.get("attempts") or [] if isinstance(a, dict)]
    if info and not attempts and info.get("status"):
        attempts.append({k: info.get(k) for k in _ATTEMPT_KEYS if k in info})
    attempt = {
        "attempt": len(attempts) + 1,
        "mode": mode,
        "status": RunStatus.RUNNING,
        "started_at": started,
        "ended_at": None,
        "resumed_from": (resume_record or {}).get("name"),
        "argv": redacted_argv(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    attempts.append(attempt)
    info["attempts"] = attempts
    return attempt


def trained_seconds(info: dict[str, Any]) -> tuple[float | None, int]:
    """The wall time of all of a run's finished attempts, and how many attempts it had.

    ``duration_s`` is the last attempt's alone; a run resumed twice spent the sum. A killed
    attempt recorded no end, so it adds nothing (its length is unknown, not zero).
    """
    attempts = [a for a in info.get("attempts") or [] if isinstance(a, dict)]
    spans = [a["ended_at"] - a["started_at"] for a in attempts
             if isinstance(a.get("ended_at"), (int, float)) and isinstance(a.get("started_at"), (int, float))]
    if not spans:
        last = info.get("duration_s")
        return (last if isinstance(last, (int, float)) else None), max(len(attempts), 1)
    return sum(spans), len(attempts)


def finish_attempt(rundir: RunDir, info: dict[str, Any], attempt: dict[str, Any], previous: dict[str, Any] | None) -> bool:
    """Write run.json at the end of an attempt.

    A failed attempt on a run whose earlier record said ``completed`` keeps that record
    (its status, step, final metrics) and only adds itself to ``attempts``. If run.json
    does not fit on the disk, its previous contents stay (the write is atomic) and this
    returns False.
    """
    attempt.update(status=info.get("status"), ended_at=info.get("ended_at"), step=info.get("step"), error=info.get("error"))
    record = info
    if info.get("status") == RunStatus.FAILED and previous and previous.get("status") == RunStatus.COMPLETED:
        record = dict(previous)
        record["attempts"] = info["attempts"]
    try:
        rundir.write_info(redact_urls(record))
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        return False
    return True


def note_unwritten_info(exc: BaseException, rundir: RunDir) -> BaseException:
    """Add to a user error that run.json could not be updated (so it still says 'running')."""
    if isinstance(exc, KitchenError):
        exc.message += f" {rundir.run_json} could not be updated for lack of space and keeps its previous contents."
        exc.args = (exc.render(),)
    return exc


# -------------------------------------------------------------------------- disk full


def as_user_error(exc: BaseException, rundir: RunDir) -> KitchenError:
    """A full disk as one paragraph naming the file and the bytes (else ``exc`` unchanged)."""
    if isinstance(exc, KitchenError):
        return exc
    if not is_disk_full(exc):
        raise exc
    last = rundir.last_checkpoint()
    size = _tree_size(Path(last["path"])) if last and "://" not in str(last.get("path")) else 0
    if last:
        after = (f"Earlier checkpoints are intact (the newest is {last.get('name')}, {size} bytes: free at least that much "
                 f"for the next one); free space, then continue with `kitchen resume {rundir.path}`.")
    else:
        after = "No checkpoint had been written yet; free space, then start the run again."
    return disk_full_error(exc, path=rundir.path, after=after)


def _tree_size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    except OSError:
        return 0


def quiet(fn: Callable[[], Any]) -> None:
    """Run ``fn``; an out-of-space error there must not mask the error being reported."""
    try:
        fn()
    except OSError as exc:
        if not is_disk_full(exc):
            raise


__all__ = [
    "DiskFullError", "as_user_error", "check_run_dir_path", "finish_attempt", "is_disk_full", "lock_run_dir",
    "quiet", "redacted_argv", "report_leftovers", "resume_record", "start_attempt",
]


class _NoLock:
    """What a non-zero rank of a torchrun job holds: rank 0 owns the run dir and its lock."""

    def release(self) -> None:
        pass


NO_LOCK = _NoLock()
