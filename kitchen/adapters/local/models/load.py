"""Loading: ``load_model(name)`` returns ``(model, tokenizer, info)``, ``load_tokenizer(name)``
only the tokenizer.

``chat_template=PATH`` (a Jinja file) replaces the tokenizer's chat template. ``info``
also carries ``base`` (where the weights truly came from, see :mod:`.provenance`) and
``base_dtype`` (the dtype final weights are saved in). Hub ids report the resolved
commit in ``info["commit"]``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from kitchen.adapters.local.models.gguf import convert_gguf
from kitchen.adapters.local.models.provenance import base_record, config_dtype
from kitchen.adapters.local.models.resolve import SMOLLM2_HF_ID, ResolvedModel, hub_client, resolve_model
from kitchen.adapters.local.models.state_dict import strip_quantization
from kitchen.errors import BackendError, ConfigError, KitchenError


def read_chat_template(path: str | os.PathLike) -> str:
    """The text of a ``chat_template=`` Jinja file, checked to parse (no torch needed)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"chat_template='{path}' does not exist; set it to a Jinja file (e.g. templates/chat.jinja).")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ConfigError(f"chat_template='{path}' is empty; it must hold a Jinja chat template.")
    try:
        from jinja2 import Environment, TemplateSyntaxError
    except ImportError:  # pragma: no cover - transformers depends on jinja2
        return text
    try:
        Environment().parse(text)
    except TemplateSyntaxError as e:
        raise ConfigError(f"chat_template='{path}', line {e.lineno}: not a valid Jinja template ({e.message}).") from None
    return text


def torch_dtype(dtype: Any):
    """A torch dtype from a config name (auto/None: float32)."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise KitchenError(f"Unknown dtype '{dtype}': use auto, float32 or bfloat16.")
    return table[dtype]


def _load_dir(path: str, dtype, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local safetensors load takes seconds: no per-tensor bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except KitchenError:
        raise
    except (OSError, ValueError) as e:
        raise BackendError(f"Could not load model '{name}' from {path}: {e}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _hub_snapshot(res: ResolvedModel):
    """Download (online) or find (offline) a hub model; progress bars are huggingface_hub's."""
    return hub_client().download(res.name, res.revision)


def _apply_chat_template(tokenizer, chat_template: str | os.PathLike | None) -> None:
    if chat_template:
        tokenizer.chat_template = read_chat_template(chat_template)


def load_tokenizer(name: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None,
                   chat_template: str | os.PathLike | None = None):
    """Only the tokenizer (cheap: no weights are loaded except on first GGUF conversion)."""
    from transformers import AutoTokenizer

    res = resolve_model(name, revision)
    if res.kind == "tiny":
        from kitchen.adapters.local.tiny import build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        _apply_chat_template(tok, chat_template)
        return tok
    if res.kind in ("smollm2", "gguf"):
        path = str(convert_gguf(Path(res.path), cache_dir))
    elif res.kind == "hub":
        path = _hub_snapshot(res).path
    else:
        path = res.path
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    _apply_chat_template(tok, chat_template)
    return tok


def load_model(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    dtype: Any = "float32",
    device: str = "cpu",
    revision: str | None = None,
    chat_template: str | os.PathLike | None = None,
    commit: str | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Load ``(model, tokenizer, info)``; the model is in eval mode on ``device``.

    ``commit`` (hub ids, on resume) loads exactly that commit instead of resolving
    ``revision`` again, since a branch may have moved since the run started; ``revision``
    is still recorded as the name the run asked for.
    """
    t0 = time.time()
    res = resolve_model(name, commit or revision)
    tdtype = torch_dtype(dtype)
    info: dict[str, Any] = {"model": res.name, "source": res.kind}
    if res.kind == "tiny":
        from kitchen.adapters.local.tiny import build_tiny

        model, tokenizer = build_tiny()
        model = model.to(tdtype)
        info["base_dtype"] = "float32"
    elif res.kind in ("smollm2", "gguf"):
        path = convert_gguf(Path(res.path), cache_dir)
        info["path"] = str(path)
        model, tokenizer = _load_dir(str(path), tdtype, res.name)
        if not getattr(tokenizer, "chat_template", None):  # a damaged cache entry: convert again
            shutil.rmtree(path, ignore_errors=True)
            path = convert_gguf(Path(res.path), cache_dir)
            model, tokenizer = _load_dir(str(path), tdtype, res.name)
        if res.kind == "smollm2":
            info["hf_id"] = SMOLLM2_HF_ID
        # Dequantised GGUF weights have no float dtype of their own: save as bf16, the dtype
        # SmolLM2 (and most GGUF sources) were published in, not the fp32 used to train.
        info["base_dtype"] = "bfloat16"
    elif res.kind == "dir":
        info["path"] = res.path
        model, tokenizer = _load_dir(res.path, tdtype, res.name)
        info["base_dtype"] = config_dtype(res.path) or "float32"
    else:
        snap = _hub_snapshot(res)
        res.path, res.commit = snap.path, snap.commit
        if commit:
            res.revision = revision
        info["path"] = snap.path
        info["revision"] = res.revision
        info["commit"] = snap.commit
        model, tokenizer = _load_dir(snap.path, tdtype, res.name)
        info["base_dtype"] = config_dtype(snap.path) or "float32"
    info["base"] = base_record(res)
    _apply_chat_template(tokenizer, chat_template)
    if chat_template:
        info["chat_template"] = str(Path(chat_template).expanduser().resolve())
    strip_quantization(model)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    info["load_seconds"] = round(time.time() - t0, 3)
    return model, tokenizer, info
