"""One live run per run dir: an OS-level lock held for the run's whole life.

Without it, two runs started on one folder (or a ``kitchen resume`` of a run that is
still going) both write into it: every step indexed twice, metrics doubled, one
config.yaml for two learning rates. The lock is ``fcntl.flock`` on ``RUN_DIR/.kitchen.lock``:

* the kernel releases it when the holder exits, however it exits (SIGKILL included),
  so a stale lock file from a dead process never blocks anyone;
* the file records the holder's pid, host and start time, so a refusal can say who
  holds the folder;
* flock locks are per open file, so two runs in one process exclude each other too.

On filesystems without flock (some network mounts) the lock is skipped with a warning
rather than refusing every run.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from kitchen.errors import RunDirError

LOCK_FILE = ".kitchen.lock"


class RunLock:
    """``with RunLock(run_dir): ...``, or ``acquire()`` / ``release()``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self.unsupported: str | None = None  # why the filesystem could not lock, if it could not

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its holder ({} when unreadable)."""
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self, *, what: str = "start a run") -> "RunLock":
        """Take the lock or raise RunDirError naming the live holder."""
        import fcntl

        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                held = self.holder()
                who = f"pid {held.get('pid', '?')} on host {held.get('host', '?')}"
                since = held.get("since")
                when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) else ""
                raise RunDirError(
                    f"Cannot {what}: run_dir {self.run_dir} is in use by a live kitchen process ({who}{when}). "
                    "Nothing was changed. Wait for it to finish, stop it (Ctrl-C or SIGTERM checkpoints and exits), "
                    "or choose another run_dir=..."
                ) from None
            # ENOLCK / EOPNOTSUPP: a filesystem without flock. Run unlocked rather than never.
            self.unsupported = f"{type(exc).__name__}: {exc.strerror or exc}"
            return self
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds anyway, only the holder's name is missing
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would race with a waiting acquirer)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["LOCK_FILE", "RunLock"]
