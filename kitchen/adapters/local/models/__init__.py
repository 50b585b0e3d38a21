"""Models for the local backend (usable without the training client), one concept per module:

* :mod:`.resolve`: *where* a name points (aliases, files, run dirs, hub ids);
* :mod:`.load`: ``load_model(name) -> (model, tokenizer, info)``, ``load_tokenizer``, chat templates;
* :mod:`.provenance`: where the base weights truly came from (adapter configs, model cards);
* :mod:`.state_dict`: models built from shared tensors, configs cleaned of quantization;
* :mod:`.gguf`: GGUF files checked and dequantised once into the cache.

This package is the public face (``kitchen.adapters.local.models.resolve_model`` is what
``kitchen validate`` checks models with); kitchen's own modules import from the concept
module. None of it imports torch at import time.
"""

from __future__ import annotations

from kitchen.adapters.local.models.gguf import check_gguf_magic, convert_gguf, gguf_cache_dir
from kitchen.adapters.local.models.load import load_model, load_tokenizer, read_chat_template, torch_dtype
from kitchen.adapters.local.models.provenance import base_model_id, base_record
from kitchen.adapters.local.models.resolve import (
    DEFAULT_MODEL,
    MODEL_ALIASES,
    SMOLLM2_HF_ID,
    SMOLLM2_PACKAGE,
    ResolvedModel,
    canonical_name,
    resolve_model,
    smollm2_gguf_path,
)
from kitchen.adapters.local.models.state_dict import (
    clean_config,
    model_from_state_dict,
    rebuild_clean,
    strip_quantization,
)
from kitchen.io.cache import cache_root  # kitchen's one cache root, re-exported for model callers

__all__ = [
    "DEFAULT_MODEL", "MODEL_ALIASES", "SMOLLM2_HF_ID", "SMOLLM2_PACKAGE", "ResolvedModel", "base_model_id", "base_record",
    "cache_root", "canonical_name", "check_gguf_magic", "clean_config", "convert_gguf", "gguf_cache_dir", "load_model",
    "load_tokenizer", "model_from_state_dict", "read_chat_template", "rebuild_clean", "resolve_model", "smollm2_gguf_path",
    "strip_quantization", "torch_dtype",
]
