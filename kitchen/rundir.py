"""The run directory: one folder holds everything needed to reproduce or resume a run.

    config.yaml        resolved config (secrets redacted)
    run.json           status, seed, start/end, git sha, package versions, final metrics
    metrics.jsonl      one object per training step / evaluation
    events.jsonl       every telemetry event
    checkpoints/       backend state per checkpoint + checkpoints.jsonl (the index)
    final/             merged weights a user loads with plain transformers

Every file written here is written atomically (temporary file, fsync, rename), so a
killed run never leaves a half-written run.json or checkpoint index entry.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitchen.errors import RunDirError

FINISHED = "completed"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _writer() -> bool:
    """issue 11: rank 0 (or a plain single process) owns the run dir's files."""
    from kitchen.distributed import is_rank0

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
        if not _writer():  # --- issue 11: under torchrun only rank 0 writes the run dir
            return
        atomic_write_text(self.run_json, json.dumps(info, indent=2, default=str) + "\n")

    # -- checkpoints ------------------------------------------------------------------

    def add_checkpoint(self, record: dict[str, Any]) -> None:
        if not _writer():  # --- issue 11
            return
        """Append one index line; the line is the commit point of a checkpoint."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        with open(self.index, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def list_checkpoints(self) -> list[dict[str, Any]]:
        if not self.index.exists():
            return []
        records = []
        for line in self.index.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run
        return records

    def last_checkpoint(self) -> dict[str, Any] | None:
        """The newest indexed checkpoint whose files still exist (remote paths are trusted)."""
        for record in reversed(self.list_checkpoints()):
            path = record.get("path", "")
            if "://" in path or Path(path).exists():
                return record
        return None

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
        if info and info.get("status") in ("failed", "interrupted") and not info.get("step") and not self.list_checkpoints():
            return "fresh"  # an attempt that failed before its first step holds nothing worth protecting
        if overwrite:
            return "overwrite"
        status = (info or {}).get("status", "unknown")
        what = "a finished run" if status == FINISHED else f"an unfinished run (status: {status})"
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
