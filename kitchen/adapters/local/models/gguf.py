"""GGUF files: checked, dequantised once into a cached safetensors model directory.

Cache layout (root: :func:`kitchen.io.cache.cache_root`)::

    <root>/models/<gguf-stem>-<gguf-size>/   config.json, model.safetensors,
                                             generation_config.json, tokenizer files

Each entry is written into a temporary sibling directory and renamed into place, so a
killed conversion never leaves a half-written cache entry.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kitchen.adapters.local.models.state_dict import rebuild_clean
from kitchen.errors import BackendError
from kitchen.io.atomic import atomic_publish_dir
from kitchen.io.cache import cache_root


def gguf_cache_dir(gguf: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    size = gguf.stat().st_size
    return cache_root(cache_dir) / "models" / f"{gguf.stem}-{size}"


def check_gguf_magic(gguf: Path) -> None:
    """A file that does not start with the GGUF magic is one paragraph, not a transformers traceback."""
    try:
        with open(gguf, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise BackendError(f"Cannot read the model file {gguf}: {exc.strerror or exc}.") from None
    if head != b"GGUF":
        raise BackendError(
            f"The model file {gguf} is not a GGUF file (it does not start with the GGUF magic bytes; "
            f"it starts with {head!r}). Pass a .gguf model file, a model folder, a hub id or an alias such as tiny-llama."
        )


def convert_gguf(gguf: Path, cache_dir: str | os.PathLike | None = None, *, quiet: bool = False) -> Path:
    """Dequantise ``gguf`` once into a cached safetensors model dir; returns that dir."""
    target = gguf_cache_dir(gguf, cache_dir)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    check_gguf_magic(gguf)  # a garbage .gguf is one paragraph, not a transformers traceback
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not quiet:
        print(
            f"[kitchen] Converting {gguf.name} to safetensors (one-time, ~20 s); cache: {target}",
            file=sys.stderr,
            flush=True,
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # damaged/unsupported file
            raise BackendError(
                f"Could not read the GGUF model {gguf}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}. "
                "Check that the file is a complete GGUF of a supported architecture (re-download it if it was cut short)."
            ) from None
        if not getattr(tokenizer, "chat_template", None):
            raise BackendError(f"The tokenizer in {gguf} has no chat template; cannot use it for chat recipes.")
        clean = rebuild_clean(model)
        del model
        clean.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_publish_dir(tmp, target, replace=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not quiet:
        print(f"[kitchen] Converted in {time.time() - t0:.1f} s.", file=sys.stderr, flush=True)
    return target
