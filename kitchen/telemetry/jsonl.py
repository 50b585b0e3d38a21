"""JSON Lines telemetry: ``events.jsonl`` (every event) and ``metrics.jsonl`` (numbers).

``JsonlSink(run_dir)`` appends one JSON object per line:

* ``events.jsonl``: ``{"event": name, "time": unix_seconds, **payload}`` for every event,
  with secret-looking values replaced by ``"***"`` (see :func:`kitchen.io.secrets.redact`).
* ``metrics.jsonl``: one row per ``training.step`` (``step``, ``loss`` - ``null`` when the
  engine sent none - and every other numeric field of the payload) and one row per
  ``eval.result`` with the eval metrics flattened:
  ``{"step": 10, "split": "test", "test_nll": 1.2}``.

Both files are opened in append mode, so a resumed run continues them; if a killed run
left a half-written last line, a newline is added first so the next record starts clean
(readers skip the broken line, see :func:`kitchen.telemetry.metrics_store.read_metrics`).

Serialisation rules (:func:`kitchen.io.jsonl.dumps`): numpy scalars/arrays become Python numbers/lists,
``Path``/``datetime``/enums/anything else become strings, tuples and sets become lists,
and **NaN / +inf / -inf become ``null``** so every line stays strict JSON that any parser
(jq, pandas, JavaScript) accepts. A NaN loss is therefore a ``null`` loss in the files;
the engine reports divergence separately (``run.warning`` / ``workflow.exception``).

Cost: one ``json.dumps`` + ``write`` per event. ``metrics.jsonl`` is flushed on every row;
``events.jsonl`` is flushed on every event except the high-frequency ``stage.start`` /
``stage.stop`` ones, which ride along with the next flush (at the latest the following
``training.step``). Nothing is fsynced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from kitchen.io.jsonl import dumps, open_append, oserror_with_path
from kitchen.io.secrets import redact_fast
from kitchen.telemetry.events import (
    EVAL_RESULT,
    STAGE_START,
    STAGE_STOP,
    TRAINING_STEP,
    Event,
)

EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.jsonl"
_NUMBER = (int, float)
_NO_FLUSH = frozenset({STAGE_START, STAGE_STOP})


def metrics_row_for_step(data: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics.jsonl row for a training.step payload: step, loss and numeric fields."""
    row: dict[str, Any] = {"step": data.get("step"), "loss": data.get("loss")}
    for k, v in data.items():
        if k not in row and (isinstance(v, _NUMBER) or (hasattr(v, "item") and getattr(v, "ndim", 1) == 0)):
            row[k] = v
    return row


def metrics_row_for_eval(data: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics.jsonl row for an eval.result payload: step, split, flattened metrics."""
    row: dict[str, Any] = {"step": data.get("step")}
    if data.get("split") is not None:
        row["split"] = data.get("split")
    metrics = data.get("metrics")
    if isinstance(metrics, Mapping):
        for k, v in metrics.items():
            row.setdefault(str(k), v)
    return row


class JsonlSink:
    """Appends every event to ``run_dir/events.jsonl``; metrics go through a MetricsStore
    (by default the JSONL one over ``run_dir/metrics.jsonl``)."""

    def __init__(self, run_dir: str | os.PathLike[str], *, skip: Iterable[str] = (), metrics: Any = None) -> None:
        """``skip``: event names not to write to events.jsonl (e.g. ``("stage.start",)`` to
        halve the stage-event cost; ``stage.stop`` carries the same path plus duration).
        ``metrics``: the MetricsStore that per-step and evaluation rows are recorded in."""
        from kitchen.telemetry.metrics_store import JsonlMetricsStore

        self.run_dir = Path(run_dir)
        self._skip = frozenset(skip)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.run_dir / EVENTS_FILE
        self.metrics_path = self.run_dir / METRICS_FILE
        self._events = open_append(self.events_path)
        self._metrics = metrics if metrics is not None else JsonlMetricsStore(self.metrics_path, eager=True)
        self._closed = False

    def handle(self, event: Event) -> None:
        if self._closed:
            return
        name = event.name
        data = event.data
        if name in self._skip:
            if name == TRAINING_STEP:
                self._write_metrics(metrics_row_for_step(data))
            elif name == EVAL_RESULT:
                self._write_metrics(redact_fast(metrics_row_for_eval(data)))
            return
        if data:
            record = {"event": name, "time": event.time, **redact_fast(data)}
            if "event" in data or "time" in data:  # a payload may not shadow the envelope
                record["event"], record["time"] = name, event.time
        else:
            record = {"event": name, "time": event.time}
        events = self._events
        line = dumps(record) + "\n"
        try:
            events.write(line)
            if name in _NO_FLUSH:
                return
            events.flush()
        except OSError as exc:
            raise oserror_with_path(exc, self.events_path, line) from None
        if name == TRAINING_STEP:
            self._write_metrics(metrics_row_for_step(data))
        elif name == EVAL_RESULT:
            self._write_metrics(redact_fast(metrics_row_for_eval(data)))

    def _write_metrics(self, row: dict[str, Any]) -> None:
        step = row.pop("step", None)
        self._metrics.record(step, row)

    def flush(self) -> None:
        if not self._closed:
            self._events.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._events.flush()
            self._events.close()
        finally:
            self._metrics.close()


__all__ = ["EVENTS_FILE", "METRICS_FILE", "JsonlSink", "metrics_row_for_eval", "metrics_row_for_step"]
