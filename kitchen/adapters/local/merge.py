"""LoRA merge: the session's current weights as a plain, frozen transformers model.

Built from a state dict, not by deepcopy + ``merge_and_unload`` (which takes ~9 s for
SmolLM2 on 2 cores): merged LoRA weights are new tensors; with LoRA, every other tensor
is the frozen base tensor, shared (training never changes it); with full fine-tuning
every tensor is cloned (FSDP2 shards gathered first). A QLoRA base is dequantized, so
the merged model holds no packed bitsandbytes data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitchen.adapters.local.lora import UNEMBED_NAMES
from kitchen.adapters.local.scale import dequantized, full_tensor, is_quantized

if TYPE_CHECKING:
    from kitchen.adapters.local.session import TrainSession


def merged_copy(session: TrainSession) -> Any:
    """A plain transformers model with ``session``'s current weights (LoRA merged), frozen.

    Under FSDP2 this gathers the shards: a collective every rank must call.
    """
    import torch

    from kitchen.adapters.local.models.state_dict import clean_config, model_from_state_dict

    model = session.model
    base = model.get_base_model() if session.lora else model
    config = clean_config(base.config)
    sd: dict[str, Any] = {}
    with torch.no_grad():
        if session.lora:
            from peft.tuners.lora import LoraLayer

            merged: dict[str, Any] = {}
            quantized: set[str] = set()  # QLoRA: layers whose stored weight is packed bitsandbytes data
            for name, mod in base.named_modules():
                if isinstance(mod, LoraLayer) and "default" in getattr(mod, "lora_A", {}):
                    layer = mod.get_base_layer()
                    w = dequantized(layer)
                    merged[f"{name}.weight"] = (w + mod.get_delta_weight("default")).to(w.dtype)
                elif ".base_layer" not in name and is_quantized(getattr(mod, "weight", None)):
                    merged[f"{name}.weight"] = dequantized(mod)
                else:
                    continue
                if is_quantized(getattr(mod.get_base_layer() if isinstance(mod, LoraLayer) else mod, "weight", None)):
                    quantized.add(name)
            for k, v in base.state_dict().items():
                if ".lora_" in k:
                    continue
                k = k.replace(".base_layer.", ".")
                owner = k.rsplit(".weight", 1)[0] if ".weight" in k else k.rsplit(".", 1)[0]
                if owner in quantized and not k.endswith(".bias"):
                    continue  # packed data and its quantization state: replaced by the dequantized weight
                sd[k] = v.detach()
            sd.update(merged)
            head = base.get_output_embeddings()
            emb = base.get_input_embeddings()
            head_w = getattr(head, "get_base_layer", lambda: head)().weight if head is not None else None
            if emb is not None and head_w is emb.weight and any(k.startswith(n) for k in merged for n in UNEMBED_NAMES):
                # LoRA on a tied unembedding: the merged model needs its own lm_head.
                config.tie_word_embeddings = False
                if hasattr(config, "get_text_config"):
                    config.get_text_config().tie_word_embeddings = False
        elif session.parallel.fsdp:  # gather FSDP2 shards (a collective: every rank calls this)
            sd = {k: full_tensor(v.detach()).clone() for k, v in base.state_dict().items()}
        else:
            clones: dict[int, Any] = {}
            for k, v in base.state_dict().items():
                key = id(v) if v.data_ptr() == 0 else (v.data_ptr(), v.dtype, tuple(v.shape))
                if key not in clones:
                    clones[key] = v.detach().clone()
                sd[k] = clones[key]
    m = model_from_state_dict(config, sd, buffers_from=base, dtype=base.dtype)
    m.config.use_cache = True
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
