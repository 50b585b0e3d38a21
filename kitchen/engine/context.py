"""The Context: everything a stage may read or write during one run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kitchen.telemetry.events import EventBus

if TYPE_CHECKING:
    from kitchen.config.spec import RunSpec
    from kitchen.ports.stores import DatasetStore
    from kitchen.ports.training import TrainingClient


@dataclass
class Adapters:
    """The port implementations chosen by ``adapters=``; built from the spec."""

    training: "TrainingClient"
    dataset_store: "DatasetStore"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    spec: "RunSpec"
    adapters: Adapters
    bus: EventBus
    run_dir: Path
    state: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    stop_requested: bool = False

    @property
    def step(self) -> int:
        """Completed optimizer steps (the step number users see, 1-based after a step)."""
        return self.state.get("step", 0)

    @property
    def training(self) -> "TrainingClient":
        return self.adapters.training

    def emit(self, event: str, /, **data: Any) -> None:
        self.bus.emit(event, **data)
