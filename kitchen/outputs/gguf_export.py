"""A merged transformers Llama dir -> one GGUF file (llama.cpp, Ollama, LM Studio load it).

The writer is llama.cpp's own ``gguf`` package (``GGUFWriter``, its tensor-name map
``get_tensor_name_map`` and its numpy quantisers ``gguf.quants.quantize``); this module
only chooses what to write, the inverse of what :mod:`kitchen.adapters.local.models.gguf`
reads through transformers:

* tensors: HF names mapped by ``gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, n)``; q/k
  projections permuted into llama.cpp's rotary layout (``convert_hf_to_gguf.py``'s
  ``LlamaModel.permute``, which transformers' GGUF reader undoes); a tied ``lm_head`` is
  not written (llama.cpp ties to ``token_embd``); 1-D tensors (norms) stay F32, and a
  matrix whose rows do not split into the quant's blocks falls back to F16, as the
  converter does.
* tokenizer: when the run's base model came from a GGUF (SmolLM2's, or a ``.gguf``
  path), its ``tokenizer.*`` keys are copied verbatim (vocab, merges, pre-tokenizer,
  special ids, chat template), so the exported file tokenises as its source did;
  otherwise they are built from the merged dir's ``tokenizer.json`` (a byte-level BPE,
  ``tokenizer.ggml.model = gpt2``).

Only the Llama architecture is written (the architectures kitchen's local backend trains
on by default: SmolLM2 and the tiny test model); another ``model_type`` is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kitchen.errors import ConfigError, KitchenError

# The quant types gguf's numpy quantisers implement (q4_k_m and the other K-quants need
# llama.cpp's llama-quantize binary: run it on an f16 export).
QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def check_quant(quant: str) -> str:
    q = str(quant).strip().lower()
    if q not in QUANTS:
        raise ConfigError(
            f"--quant {quant!r} is not a quantisation the GGUF writer supports; use one of {', '.join(QUANTS)}. "
            "K-quants such as q4_k_m come from llama.cpp's `llama-quantize` run on an f16 export."
        )
    return q


def _permute(w, n_head: int, n_head_kv: int | None):
    """``convert_hf_to_gguf.py`` LlamaModel.permute: HF rotary halves -> llama.cpp interleaved."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_state(model_dir: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise KitchenError(f"{model_dir} holds no *.safetensors weights to convert to GGUF.")
    state: dict[str, Any] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except TypeError:  # bf16 has no numpy dtype: read through torch
            from safetensors.torch import load_file as load_torch

            state.update({k: v.float().numpy() for k, v in load_torch(str(f)).items()})
    return state


def _copy_tokenizer_kv(writer, base_gguf: Path) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(base_gguf))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)


def _hf_tokenizer_kv(writer, model_dir: Path) -> None:
    from gguf import TokenType
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tj = json.loads((model_dir / "tokenizer.json").read_text()) if (model_dir / "tokenizer.json").is_file() else {}
    model = tj.get("model") or {}
    if model.get("type") not in (None, "BPE"):
        raise KitchenError(
            f"The tokenizer in {model_dir} is a {model.get('type')} model; the GGUF export writes byte-level BPE "
            "tokenizers (or copies a GGUF base's own)."
        )
    n = len(tok)
    tokens = tok.convert_ids_to_tokens(list(range(n)))
    special = set(tok.all_special_ids) | {int(t["id"]) for t in tj.get("added_tokens", []) if t.get("special")}
    types = [TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    else:
        # A byte-level vocab with no merges (tiny-llama): GGUF cannot hold an empty array, so
        # the file carries zero scores instead (transformers then derives no merges). llama.cpp
        # itself refuses a BPE vocab without merges; real tokenizers (SmolLM2's) have them.
        writer.add_token_scores([0.0] * n)
    for kind in ("bos", "eos", "pad", "unk"):
        tid = getattr(tok, f"{kind}_token_id", None)
        if tid is not None:
            getattr(writer, f"add_{kind}_token_id")(int(tid))
    writer.add_add_bos_token(False)
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def write_gguf(model_dir: str | Path, out: str | Path, *, quant: str = "f16", base_gguf: str | Path | None = None,
               name: str | None = None) -> Path:
    """Write the merged transformers dir ``model_dir`` as the GGUF file ``out``."""
    import numpy as np
    from gguf import (
        GGML_QUANT_SIZES,
        MODEL_ARCH,
        GGMLQuantizationType,
        GGUFWriter,
        LlamaFileType,
        get_tensor_name_map,
        quants,
    )

    quant = check_quant(quant)
    model_dir, out = Path(model_dir), Path(out)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise KitchenError(
            f"GGUF export writes Llama-architecture models (SmolLM2, tiny-llama); this run's model is "
            f"{cfg.get('model_type')!r}. Export --format merged and use llama.cpp's convert_hf_to_gguf.py."
        )
    n_layer, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    qtype = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16, "bf16": GGMLQuantizationType.BF16,
             "q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0, "q4_1": GGMLQuantizationType.Q4_1,
             "q5_0": GGMLQuantizationType.Q5_0, "q5_1": GGMLQuantizationType.Q5_1}[quant]
    ftype = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
             "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0, "q4_1": LlamaFileType.MOSTLY_Q4_1,
             "q5_0": LlamaFileType.MOSTLY_Q5_0, "q5_1": LlamaFileType.MOSTLY_Q5_1}[quant]

    state = _load_state(model_dir)
    tied = bool(cfg.get("tie_word_embeddings", False))
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, n_layer)
    writer = GGUFWriter(str(out), "llama")
    writer.add_type("model")
    writer.add_name(name or "kitchen export")
    writer.add_block_count(n_layer)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise KitchenError(
            f"GGUF export writes default rotary embeddings; this model's rope_type is {rope.get('rope_type')!r}. "
            "Export --format merged and use llama.cpp's convert_hf_to_gguf.py."
        )
    writer.add_rope_freq_base(float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_file_type(int(ftype))
    if base_gguf:
        _copy_tokenizer_kv(writer, Path(base_gguf))
    else:
        _hf_tokenizer_kv(writer, model_dir)
    writer.add_quantization_version(2)

    for hf_name, arr in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gg = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gg is None:
            raise KitchenError(f"GGUF export: no llama.cpp name for tensor {hf_name!r} in {model_dir}.")
        data = np.asarray(arr, dtype=np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        data = np.ascontiguousarray(data)
        if data.ndim == 1 or qtype == GGMLQuantizationType.F32:
            writer.add_tensor(gg, data)
            continue
        t = qtype
        if data.shape[-1] % GGML_QUANT_SIZES[t][0] != 0:
            t = GGMLQuantizationType.F16
        if t == GGMLQuantizationType.F16:
            writer.add_tensor(gg, data.astype(np.float16))
        else:
            writer.add_tensor(gg, quants.quantize(data, t), raw_dtype=t)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


CHATML_TEMPLATE = (
    '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'
)


def modelfile_text(gguf_name: str, chat_template: str | None) -> str:
    """An Ollama Modelfile for ``gguf_name`` (in the same folder). A ChatML chat template
    (SmolLM2's, tiny-llama's) is spelled in Ollama's Go template syntax; for any other,
    Ollama reads ``tokenizer.chat_template`` from the GGUF itself."""
    lines = [f"FROM ./{gguf_name}"]
    if chat_template and "<|im_start|>" in chat_template:
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', 'PARAMETER stop "<|im_end|>"']
    return "\n".join(lines) + "\n"
