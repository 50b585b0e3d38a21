"""The Context: everything a stage may read or write during one run.

State is typed. The engine's own bookkeeping is :class:`Progress` (``ctx.progress``)
and the :class:`~kitchen.engine.pipeline.StepPipeline` (``ctx.pipeline``). Everything
else a workflow keeps between stages lives in a dataclass of its own, fetched with
``ctx.use(MyState)``: the first call creates it with its defaults, later calls return the
same object. A user's stage keeps its state the same way::

    @dataclass
    class Kept:
        rows: list[dict] = field(default_factory=list)

    def keep_best(ctx: Context) -> None:
        ctx.use(Kept).rows.append(...)

There are no string keys to misspell, and a type checker sees every field. What stages
learn for run.json goes in the typed :class:`~kitchen.engine.record.RunRecord`
(``ctx.record``). The context is generic over the workflow's config class, so a stage
annotated ``ctx: Context[PreferenceConfig]`` reads ``ctx.spec.dpo_beta`` with its type.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kitchen.engine.pipeline import StepPipeline
from kitchen.engine.record import RunRecord
from kitchen.telemetry.events import EventBus

if TYPE_CHECKING:
    from kitchen.ports.stores import DatasetStore
    from kitchen.ports.training import TrainingClient

T = TypeVar("T")
SpecT = TypeVar("SpecT")  # the workflow's config class (a RunSpec subclass, or a mixin of keys it has)


@dataclass
class Adapters:
    """The port implementations chosen by ``adapters=``; built from the spec."""

    training: "TrainingClient"
    dataset_store: "DatasetStore"


@dataclass
class Progress:
    """Where the run is: the engine, the checkpoint and the evaluate stages share this."""

    step: int = 0  # completed optimizer steps (1-based after the first step)
    total_steps: int | None = None
    epoch: int = 0
    last_checkpoint_step: int | None = None
    last_eval_step: int | None = None
    resume_from: dict[str, Any] | None = None  # the checkpoint record a resumed run restores
    # where a streamed dataset stood after each recent step (step -> position); a checkpoint at
    # step s records data_positions[s], and a resume starts the stream there
    data_positions: dict[int, dict[str, Any]] = field(default_factory=dict)
    stage_time: dict[str, float] = field(default_factory=dict)  # seconds per looped stage


class Context(Generic[SpecT]):
    def __init__(self, spec: SpecT, adapters: Adapters | None, bus: EventBus, run_dir: Path) -> None:
        self.spec: SpecT = spec
        self.adapters = adapters
        self.bus = bus
        self.run_dir = run_dir
        self.progress = Progress()
        self.pipeline = StepPipeline(self)
        self.metrics: dict[str, float] = {}  # the latest value of each reported metric (run.json's final_metrics)
        self.record = RunRecord()  # facts recorded in run.json (session, data stats, evals, final weights)
        self.stop_requested = False
        self._state: dict[type, Any] = {}
        self._lock = threading.Lock()

    @property
    def step(self) -> int:
        """Completed optimizer steps (the step number users see, 1-based after a step)."""
        return self.progress.step

    @property
    def training(self) -> "TrainingClient":
        assert self.adapters is not None, "the training adapter is built after preflight"
        return self.adapters.training

    def use(self, kind: type[T]) -> T:
        """This run's instance of the state class ``kind``, created with its defaults on first use."""
        try:
            return self._state[kind]
        except KeyError:
            with self._lock:  # parallel branches may ask at the same time
                if kind not in self._state:
                    self._state[kind] = kind()
                return self._state[kind]

    def has(self, kind: type) -> bool:
        return kind in self._state

    def emit(self, event: str, /, **data: Any) -> None:
        self.bus.emit(event, **data)
