"""The local training backend (``adapters=local``): torch + transformers + peft.

``LocalTrainingClient`` and ``LocalSamplingClient`` are imported lazily, so importing
this package (or ``kitchen.adapters.local.models``) does not pull in torch.
"""

from __future__ import annotations

import logging
from typing import Any

from kitchen.adapters.local.threads import check_threads

__all__ = ["LocalTrainingClient", "LocalSamplingClient"]

# With the `qlora` extra installed, peft imports bitsandbytes on every run, and on a machine
# without CUDA its CPU backend logs a warning about an optional kernels package to stderr.
# Kitchen never runs bitsandbytes' CPU kernels in training (quantization is CUDA-only), so
# that warning would only bury the run's own first line (and its one-paragraph errors).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def __getattr__(name: str) -> Any:
    if name == "LocalTrainingClient":
        from kitchen.adapters.local.client import LocalTrainingClient

        return LocalTrainingClient
    if name == "LocalSamplingClient":
        from kitchen.adapters.local.sampling import LocalSamplingClient

        return LocalSamplingClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def preflight(session: Any, options: Any = None) -> None:
    """What the local backend would refuse before its first step, checked without torch:
    its own options, and a .gguf model file that is not one (the model itself is resolved
    by the session's preflight)."""
    from pathlib import Path

    check_threads((options or {}).get("threads"))
    fused = str(getattr(session, "fused_loss", "auto") or "auto").lower()
    precision = str(getattr(session, "precision", "auto") or "auto").lower()
    cuda_only = str(getattr(session, "mixed_precision", "no") or "no").lower() == "fp16" or getattr(session, "quantization", None)
    explicit_bf16 = precision == "bf16" and not getattr(session, "force_precision", False)
    if cuda_only or fused not in ("auto", "none") or explicit_bf16:  # else torch is not imported
        device = str(session.device or "auto").lower()
        if device == "auto":  # torch is imported only for CUDA-only options, an explicit kernel or precision=bf16
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if cuda_only:
            from kitchen.adapters.local.scale import check_cuda_only_options

            check_cuda_only_options(session.mixed_precision, session.quantization, device)
        if fused not in ("auto", "none"):
            from kitchen.adapters.local.loss_head import choose_fused

            choose_fused(fused, device)
        if explicit_bf16 and str(getattr(session, "mixed_precision", "no") or "no").lower() == "no" \
                and str(getattr(session, "dtype", "auto") or "auto").lower() in ("auto", "float32", "fp32") and device == "cpu":
            import torch

            from kitchen.adapters.local.scale import Precision, resolve_precision

            resolve_precision(Precision(device=device), precision, torch.float32, force=False)
    model = Path(str(session.base_model)).expanduser()
    if model.suffix == ".gguf" and model.is_file():
        from kitchen.adapters.local.models.gguf import check_gguf_magic

        check_gguf_magic(model)


def offline_tokenizer(session: Any, options: Any = None) -> Any:
    """The tokenizer a session on ``session.base_model`` would use, loaded without weights.

    None for a hub model that is not in the local cache: ``validate`` must not start a
    multi-GB download just to count tokens (the run downloads it, then checks the data).
    """
    from kitchen.adapters.local.models import load_tokenizer, resolve_model

    res = resolve_model(session.base_model, session.model_revision, offline_ok=True)
    if res.kind == "hub" and not res.path:
        return None
    return load_tokenizer(session.base_model, cache_dir=(options or {}).get("cache_dir"),
                          revision=session.model_revision, chat_template=session.chat_template)
