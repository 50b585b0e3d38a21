"""State-dict surgery: transformers models built from (shared) tensors, and configs or
models cleaned of GGUF / quantization leftovers so that ``save_pretrained`` writes a
plain checkpoint. Used by GGUF conversion, the shared base, LoRA merges and snapshots."""

from __future__ import annotations

import copy
from typing import Any


def strip_quantization(model) -> None:
    """Make a GGUF-loaded (dequantised) model saveable with ``save_pretrained``."""
    cfg = model.config
    if getattr(cfg, "quantization_config", None) is not None:
        try:
            delattr(cfg, "quantization_config")
        except AttributeError:
            cfg.quantization_config = None
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            try:
                setattr(model, attr, None)
            except Exception:  # noqa: BLE001 - best effort: a model without these hooks keeps its state dict
                pass
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except Exception:  # noqa: BLE001 - best effort, as above
            pass


def model_from_state_dict(config, state_dict: dict[str, Any], *, buffers_from=None, dtype=None):
    """Build a plain transformers model from ``config`` whose tensors *are* ``state_dict``'s.

    No random init and no copy: parameters are assigned (``assign=True``), so sharing a
    frozen tensor between models is possible. Non-persistent buffers (rotary
    ``inv_freq``) are taken from ``buffers_from`` (a model of the same architecture).
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(state_dict, assign=True, strict=False)
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_cfg, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:  # pragma: no cover - defensive
        raise RuntimeError(f"model_from_state_dict: parameters without values: {missing[:5]}")
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            if buffers_from is None:  # pragma: no cover - defensive
                raise RuntimeError(f"model_from_state_dict: buffer {name} needs buffers_from")
            mod_name, _, attr = name.rpartition(".")
            src = buffers_from.get_submodule(mod_name) if mod_name else buffers_from
            model.get_submodule(mod_name)._buffers[attr] = getattr(src, attr).detach().clone()
    gen = getattr(buffers_from, "generation_config", None)
    if gen is not None:
        model.generation_config = copy.deepcopy(gen)
    return model


def clean_config(config):
    """A copy of ``config`` without GGUF/quantization leftovers."""
    from transformers import AutoConfig

    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg)


def rebuild_clean(model):
    """A fresh copy of ``model`` built from its config and state dict (no quantizer)."""
    return model_from_state_dict(clean_config(model.config), model.state_dict(), buffers_from=model, dtype=model.dtype)
