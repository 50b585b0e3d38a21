"""A ``MetricsStore`` over a ``metrics.jsonl`` file, and a reader that survives killed runs.

Rows are ``{"step": step, **metrics}``, one JSON object per line, written with the same
rules as the JSONL sink (NaN/inf -> null, numpy -> Python). ``JsonlSink`` records
``run_dir/metrics.jsonl`` through this store, from ``training.step`` and ``eval.result``
events; read that file back with :func:`read_metrics`, which survives killed runs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from kitchen.io.jsonl import dumps, open_append, oserror_with_path

log = logging.getLogger("kitchen.telemetry")


def read_metrics(path: str | os.PathLike[str], *, dedupe: bool = False) -> list[dict[str, Any]]:
    """All rows of a metrics JSONL file; ``[]`` when it does not exist.

    A line that is not a complete JSON object - typically the last line of a run that was
    killed mid-write, or such a line followed by a resumed run's rows - is skipped (logged
    at debug level for a truncated last line, warning level elsewhere).

    ``dedupe=True`` keeps only the last row for each ``(step, split)``: a run resumed from
    an earlier checkpoint re-logs the steps after it, and the later rows win. Order is by
    first appearance.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    rows: list[dict[str, Any]] = []
    lines = raw.split(b"\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            (log.debug if i == last else log.warning)("%s: skipping unreadable line %d", path, i + 1)
            continue
        rows.append(row)
    return _dedupe(rows) if dedupe else rows


def _dedupe(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in rows:
        latest[(row.get("step"), row.get("split"))] = row  # keeps first position, newest row
    return list(latest.values())


class JsonlMetricsStore:
    """``MetricsStore`` port over a JSONL file (append mode, flushed per record)."""

    def __init__(self, path: str | os.PathLike[str], eager: bool = False) -> None:
        """``eager``: create the file now (a run dir always has metrics.jsonl); otherwise on
        the first record, so read-only use creates no file."""
        self.path = Path(path)
        self._fh = open_append(self.path) if eager else None

    def record(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._fh is None:
            self._fh = open_append(self.path)
        row = {"step": step}
        for k, v in metrics.items():
            if k != "step":
                row[k] = v
        line = dumps(row) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as exc:
            raise oserror_with_path(exc, self.path, line) from None

    def read(self) -> list[dict[str, Any]]:
        if self._fh is not None:
            self._fh.flush()
        return read_metrics(self.path)

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()


__all__ = ["JsonlMetricsStore", "read_metrics"]
