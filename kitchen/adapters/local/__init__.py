"""The local training backend (``adapters=local``): torch + transformers + peft.

``LocalTrainingClient`` and ``LocalSamplingClient`` are imported lazily, so importing
this package (or ``kitchen.adapters.local.models``) does not pull in torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalTrainingClient", "LocalSamplingClient"]


def __getattr__(name: str) -> Any:
    if name == "LocalTrainingClient":
        from kitchen.adapters.local.client import LocalTrainingClient

        return LocalTrainingClient
    if name == "LocalSamplingClient":
        from kitchen.adapters.local.sampling import LocalSamplingClient

        return LocalSamplingClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

