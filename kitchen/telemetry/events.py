"""Event names and the in-process event bus.

Names follow the seeds' telemetry tree (``workflow.start``, ``training.step``...). An
event is a name, a monotonic timestamp and a flat payload dict. Sinks subscribe to the
bus; a sink that raises is dropped with one warning so telemetry never ends a run.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Protocol

log = logging.getLogger("kitchen.telemetry")
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # see kitchen.runs.diskfull

WORKFLOW_START = "workflow.start"
WORKFLOW_STOP = "workflow.stop"
WORKFLOW_EXCEPTION = "workflow.exception"
STAGE_START = "stage.start"
STAGE_STOP = "stage.stop"
STAGE_EXCEPTION = "stage.exception"
TRAINING_STEP = "training.step"
TRAINING_EPOCH = "training.epoch"
TRAINING_CHECKPOINT = "training.checkpoint"
EVAL_START = "eval.start"
EVAL_STOP = "eval.stop"
EVAL_RESULT = "eval.result"
SAMPLE = "sample.completion"  # a sampled completion shown to the user (before/after, rollouts)
RUN_INFO = "run.info"  # free-form notes: model loaded, resume point, warnings
RUN_WARNING = "run.warning"
ARTIFACT_SAVED = "artifact.saved"  # files worth tracking were written (path, kind="weights"...)



class RunStatus(StrEnum):
    """How a run (an attempt) ended: ``workflow.stop``'s ``status`` and run.json's.

    A ``StrEnum``, so it is its value wherever a string is expected: JSON, logs and the
    run.json written before this type existed read and compare the same.
    """

    RUNNING = "running"  # started, no ending recorded yet
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: checkpointed, resumable
    KILLED = "killed"  # shown by `kitchen runs` for a "running" record whose process is gone

    @property
    def finished_well(self) -> bool:
        """Whether the run ended on purpose (completed, or stopped by the user)."""
        return self in (RunStatus.COMPLETED, RunStatus.INTERRUPTED)

    @property
    def color(self) -> str:
        """The colour the console summary, `kitchen runs` and sweep tables show it in."""
        return _STATUS_COLORS[self]

    @classmethod
    def of(cls, value: Any) -> "RunStatus | None":
        """``value`` (a run.json or event field) as a status; None when it is none of them."""
        try:
            return cls(value)
        except ValueError:
            return None


_STATUS_COLORS = {RunStatus.RUNNING: "cyan", RunStatus.COMPLETED: "green", RunStatus.FAILED: "red",
                  RunStatus.INTERRUPTED: "yellow", RunStatus.KILLED: "yellow"}


ALL_EVENTS = (
    WORKFLOW_START, WORKFLOW_STOP, WORKFLOW_EXCEPTION, STAGE_START, STAGE_STOP, STAGE_EXCEPTION,
    TRAINING_STEP, TRAINING_EPOCH, TRAINING_CHECKPOINT, EVAL_START, EVAL_STOP, EVAL_RESULT,
    SAMPLE, RUN_INFO, RUN_WARNING, ARTIFACT_SAVED,
)


@dataclass
class Event:
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


class Sink(Protocol):
    """Anything that wants events. ``close`` is called once when the run ends."""

    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


class EventBus:
    """Synchronous fan-out to sinks; a failing sink is removed, the run goes on."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._listeners: list[Callable[[Event], None]] = []
        self.dropped: list[str] = []

    def subscribe(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def listen(self, fn: Callable[[Event], None]) -> None:
        """A plain callback (tests, the sweep summary). Same drop-on-error rule."""
        self._listeners.append(fn)

    def emit(self, name: str, /, **data: Any) -> None:
        if not self._sinks and not self._listeners:
            return
        event = Event(name, data)
        for sink in list(self._sinks):
            try:
                sink.handle(event)
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
                    self._drop(sink, exc, warn=False)
                    raise  # ...except a full disk: training on without metrics would lose them
                self._drop(sink, exc)
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception as exc:  # noqa: BLE001
                self._listeners.remove(fn)
                self._warn(getattr(fn, "__name__", repr(fn)), exc)

    def _drop(self, sink: Sink, exc: Exception, warn: bool = True) -> None:
        self._sinks.remove(sink)
        if warn:
            self._warn(type(sink).__name__, exc)
        try:
            sink.close()
        except Exception:  # noqa: BLE001
            pass

    def _warn(self, who: str, exc: Exception) -> None:
        self.dropped.append(who)
        log.warning("telemetry sink %s failed and was dropped: %s: %s", who, type(exc).__name__, exc)

    def close(self) -> None:
        for sink in list(self._sinks):
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                self._warn(type(sink).__name__, exc)
        self._sinks.clear()
