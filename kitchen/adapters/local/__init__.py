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


def preflight(session: Any, options: Any = None) -> None:
    """What would stop ``start_session`` early, checked without torch: the model must resolve
    (an alias, a local dir or GGUF file, a run dir, or a cached hub id) and the LoRA rank be sane."""
    from kitchen.adapters.local.models import _hub_local_dir, resolve_model

    resolved = resolve_model(session.base_model)
    if resolved.kind == "hub":
        _hub_local_dir(resolved.name)  # hub ids load from the local cache (see docs/backends.md)
