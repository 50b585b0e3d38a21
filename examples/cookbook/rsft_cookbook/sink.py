"""A telemetry sink: every kept completion as one row of ``kept.csv`` in the run dir.

A sink is any object with ``handle(event)`` and ``close()``. Kitchen builds it from a
name in ``telemetry.sinks`` and passes ``run_dir`` because the constructor names it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from kitchen.api import Event

KEPT_EVENT = "rsft.kept"  # emitted by rsft_cookbook.stages.KeepBest
COLUMNS = ("step", "reward", "prompt", "completion")


class KeptSamplesCSV:
    """Append ``step, reward, prompt, completion`` per kept completion (a resumed run appends)."""

    def __init__(self, run_dir: str | Path, filename: str = "kept.csv") -> None:
        path = Path(run_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(COLUMNS)

    def handle(self, event: Event) -> None:
        if event.name == KEPT_EVENT:
            self._csv.writerow([event.data.get(c) for c in COLUMNS])
            self._file.flush()

    def close(self) -> None:
        self._file.close()
