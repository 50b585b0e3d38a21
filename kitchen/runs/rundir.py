"""The run directory: one folder holds everything needed to reproduce or resume a run.

    config.yaml        resolved config (secrets redacted)
    run.json           status, seed, start/end, git sha, package versions, final metrics
    metrics.jsonl      one object per training step / evaluation
    events.jsonl       every telemetry event
    checkpoints/       backend state per checkpoint + checkpoints.jsonl (the index)
    final/             merged weights a user loads with plain transformers

Every file written here is written atomically (temporary file, fsync, rename), so a
killed run never leaves a half-written run.json or checkpoint index entry.

Paths inside the folder are stored relative to it (the checkpoint index's ``path``),
so a run dir that is moved or copied still resumes from its checkpoints. Records
written by older versions hold absolute paths; those still load, and when the folder
was moved since, the checkpoint is found again by name under ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitchen.errors import RunDirError
from kitchen.io.atomic import atomic_write_text
from kitchen.telemetry.events import RunStatus

# Temporary names left behind by a killed write: ``.step_000010.tmp-abc123`` (local
# backend), ``.step_000010.tmp`` (noop), ``.run.json.tmp-1234`` (atomic_write_text).
_LEFTOVER = re.compile(r"^\..+\.tmp(-[^/]*)?$")
_STEP_NAME = re.compile(r"^step_(\d+)$")


def _writer() -> bool:
    """Rank 0 (or a plain single process) owns the run dir's files."""
    from kitchen.runs.distributed import is_rank0

    return is_rank0()


@dataclass
class RunDir:
    path: Path

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def index(self) -> Path:
        return self.checkpoints / "checkpoints.jsonl"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def read_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.run_json.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {"status": "unknown"}

    def write_info(self, info: dict[str, Any]) -> None:
        if not _writer():  # under torchrun only rank 0 writes the run dir
            return
        atomic_write_text(self.run_json, json.dumps(info, indent=2, default=str) + "\n")

    # -- checkpoints ------------------------------------------------------------------

    def add_checkpoint(self, record: dict[str, Any]) -> None:
        """Append one index line; the line is the commit point of a checkpoint.

        A path inside the run dir is stored relative to it (so the folder can move), and
        a torn last line left by a killed run is ended first (the same repair as the
        telemetry writer's), so this record is never glued onto the fragment. Under
        torchrun only rank 0 writes.
        """
        if not _writer():
            return
        from kitchen.io.jsonl import open_append

        record = dict(record)
        record["path"] = self.relative(record.get("path", ""))
        with open_append(self.index) as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def relative(self, path: str) -> str:
        """``path`` relative to the run dir when it lies inside it; anything else unchanged."""
        if not path or "://" in path:
            return path
        path = os.path.abspath(path)  # a path relative to the cwd (run_dir=runs/x) counts as inside too
        for root in {self.path.absolute(), self.path.resolve()}:
            try:
                return Path(os.path.abspath(path)).relative_to(root).as_posix()
            except ValueError:
                pass
            try:
                return Path(path).resolve().relative_to(root).as_posix()
            except (ValueError, OSError):
                pass
        return path

    def locate(self, record: dict[str, Any]) -> str | None:
        """Where a record's checkpoint is now: an existing local path, a remote URL, or None.

        Relative paths are taken from the run dir. An absolute path from an older version
        is used when it still exists; when the folder was moved since, the checkpoint is
        looked up by its name under ``checkpoints/`` of this folder.
        """
        path = str(record.get("path", ""))
        if "://" in path:
            return path
        if path and not os.path.isabs(path):
            candidate = self.path / path
            if candidate.exists():
                return str(candidate.absolute())
        elif path and Path(path).exists():
            return path
        name = str(record.get("name") or (Path(path).name if path else ""))
        candidate = self.checkpoints / name
        if name and candidate.exists():
            return str(candidate.absolute())
        return None

    def list_checkpoints(self) -> list[dict[str, Any]]:
        if not self.index.exists():
            return []
        records = []
        for line in self.index.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run
            if isinstance(record, dict) and "step" in record:
                records.append(record)
        return records

    def _resolved(self, record: dict[str, Any]) -> dict[str, Any] | None:
        where = self.locate(record)
        if where is None:
            return None
        return {**record, "path": where}

    def last_checkpoint(self) -> dict[str, Any] | None:
        """The newest indexed checkpoint whose files still exist (remote paths are trusted),
        with its ``path`` made absolute for the current location of the run dir."""
        for record in reversed(self.list_checkpoints()):
            found = self._resolved(record)
            if found is not None:
                return found
        return None

    def find_checkpoint(self, wanted: str) -> dict[str, Any]:
        """The checkpoint ``resume_from=`` names: an index name (``step_000010``) or a path.

        Raises RunDirError listing the checkpoints there are when nothing matches.
        """
        records = self.list_checkpoints()
        for record in reversed(records):
            if record.get("name") == wanted:
                found = self._resolved(record)
                if found is not None:
                    return found
        target = Path(wanted).expanduser()
        if target.exists():
            target_abs = target.resolve()
            for record in reversed(records):
                where = self.locate(record)
                if where and "://" not in where and Path(where).resolve() == target_abs:
                    return {**record, "path": str(target_abs)}
            match = _STEP_NAME.match(target_abs.name)
            if match:
                return {"name": target_abs.name, "step": int(match.group(1)), "path": str(target_abs), "epoch": 0}
            raise RunDirError(
                f"resume_from={wanted}: {target_abs} is not a checkpoint of {self.path} and its name does not "
                "say its step (expected a folder named step_NNNNNN)."
            )
        names = list(dict.fromkeys(str(r.get("name")) for r in records if self.locate(r) is not None))  # a resume re-indexes a step
        listing = ", ".join(names) if names else "none"
        raise RunDirError(
            f"resume_from={wanted}: no such checkpoint in {self.path}. Checkpoints there: {listing}. "
            "Pass one of these names or the path of a checkpoint folder."
        )

    def remove_leftovers(self) -> tuple[int, int]:
        """Delete temporary files and folders a killed write left behind; returns (count, bytes).

        Only names that the atomic writers use for their temporaries are touched, and only
        while this process holds the run-dir lock, so no live writer can own them.
        """
        count = size = 0
        for folder in (self.path, self.checkpoints, self.final, self.final.parent):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if not _LEFTOVER.match(entry.name) or entry.name.startswith(".kitchen.lock"):
                    continue
                try:
                    if entry.is_dir() and not entry.is_symlink():
                        size += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                        shutil.rmtree(entry)
                    else:
                        size += entry.lstat().st_size
                        entry.unlink()
                    count += 1
                except OSError:
                    pass
        return count, size

    # -- safety ---------------------------------------------------------------------

    def check_can_start(self, *, resume: bool, overwrite: bool) -> str:
        """Decide how to treat what is already in the folder: 'fresh', 'resume' or 'overwrite'.

        Refuses to silently reuse a folder holding a run: a finished run needs
        resume=true (to extend it) or overwrite=true or a new run_dir.
        """
        info = self.read_info()
        occupied = info is not None or self.index.exists()
        if resume:
            if not occupied:
                raise RunDirError(
                    f"resume=true but {self.path} holds no run to resume (no run.json or checkpoints). "
                    "Drop resume=true to start a fresh run there."
                )
            return "resume"
        if not occupied:
            return "fresh"
        if info and info.get("status") in (RunStatus.FAILED, RunStatus.INTERRUPTED) and not info.get("step") and not self.list_checkpoints():
            return "fresh"  # an attempt that failed before its first step holds nothing worth protecting
        if overwrite:
            return "overwrite"
        status = (info or {}).get("status", "unknown")
        what = "a finished run" if status == RunStatus.COMPLETED else f"an unfinished run (status: {status})"
        steps = (info or {}).get("step")
        detail = f" of recipe {info.get('recipe')}" if info and info.get("recipe") else ""
        detail += f" at step {steps}" if steps is not None else ""
        raise RunDirError(
            f"run_dir {self.path} already holds {what}{detail}. Nothing was changed. "
            f"Pass resume=true to continue it from its last checkpoint (e.g. with a larger max_steps), "
            f"overwrite=true to move it aside to {self.path.name}.old-TIMESTAMP and start fresh, "
            f"or choose another run_dir=..."
        )

    def move_aside(self) -> Path:
        """overwrite=true never deletes: the old run is renamed next to the new one."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.old-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.old-{stamp}-{n}")
            n += 1
        shutil.move(str(self.path), str(target))
        self.path.mkdir(parents=True, exist_ok=True)
        return target
