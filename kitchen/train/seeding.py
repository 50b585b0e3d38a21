"""Seeding and RNG-state capture for reproducible (and exactly resumable) runs.

No torch or numpy import at module import time: ``kitchen --help`` must stay cheap.
"""

from __future__ import annotations

import random
import sys
from typing import Any


def seed_everything(seed: int, *, torch: bool | None = None) -> None:
    """Seed Python's ``random``, numpy and torch (CPU and every CUDA device).

    ``torch=None`` seeds torch only when it is already imported (so a torch-free
    backend never pays for importing it); ``True`` imports it; ``False`` skips it.
    """
    seed = int(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass
    if torch is None:
        torch = "torch" in sys.modules
    if torch:
        import torch as _torch

        _torch.manual_seed(seed)
        if _torch.cuda.is_available():
            _torch.cuda.manual_seed_all(seed)


def get_rng_state() -> dict[str, Any]:
    """Every RNG state we know of: ``{"python": ..., "numpy": ..., "torch": ..., "cuda": [...]}``.

    Values are plain Python objects (python, numpy) and tensors (torch, cuda).
    """
    state: dict[str, Any] = {"python": random.getstate()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if "torch" in sys.modules:
        import torch

        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured (missing entries are left alone)."""
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        import numpy as np

        np.random.set_state(tuple(state["numpy"]))
    if "torch" in state or "cuda" in state:
        import torch

        if "torch" in state:
            torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
