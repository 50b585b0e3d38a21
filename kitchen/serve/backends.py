"""The kitchen TrainingClients behind ``kitchen serve``, and the one lock their start-up takes.

``start_session`` seeds the process-global torch RNG and then draws the LoRA init from
it, so two concurrent starts would take each other's random numbers (same first loss,
different runs after). Training models, base samplers and snapshot sources all start
under :data:`START_LOCK`.
"""

from __future__ import annotations

import threading
from typing import Any

from kitchen.errors import KitchenError

START_LOCK = threading.Lock()


def make_backend(kind: str) -> Any:
    """A fresh kitchen TrainingClient for one served model."""
    if kind == "noop":
        from kitchen.adapters.noop.training import NoopTrainingClient

        return NoopTrainingClient()
    if kind == "local":
        try:
            from kitchen.adapters.local import LocalTrainingClient
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise KitchenError(f"kitchen serve --backend local needs the local torch backend: {exc}") from exc
        return LocalTrainingClient()
    raise KitchenError(f"unknown serve backend {kind!r}; use 'local' or 'noop'")
