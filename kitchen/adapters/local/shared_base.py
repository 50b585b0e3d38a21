"""One frozen copy of a base model per process, shared by every LoRA session over it.

Why: ``kitchen serve`` runs many training sessions in one process. Each LoRA session
used to load its own copy of the base model (about 0.5 GiB for SmolLM2-135M in fp32),
though LoRA training never changes a base weight: only the adapter matrices and their
optimizer state differ between sessions. Here the base weights are loaded once per
(model, revision, pinned commit, dtype, device, chat template, cache dir) and every LoRA session gets
a *view*: its own module tree (PEFT wraps modules in place, so the tree cannot be
shared) whose frozen parameters are the shared tensors (no copy). Sampler snapshots
built from a session (:mod:`.snapshots`) share the same tensors in turn.

The registry holds the shared base weakly: it lives while a session (or a sampler)
holds it, and is freed with the last one, so a single ``kitchen run`` pays exactly
what it paid before. Full fine-tuning sessions never come here: they train every
weight and own their copy.
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


@dataclass(eq=False)
class SharedBase:
    """The frozen base model (never trained, never handed out for training) and how it was loaded."""

    model: Any
    tokenizer: Any
    info: dict[str, Any]
    key: tuple = field(default=())

    def view(self) -> tuple[Any, Any, dict[str, Any]]:
        """(model, tokenizer, info) for one session: a fresh module tree over the shared tensors.

        The tokenizer and info are copies, because sessions may change them (pad token,
        chat template); the weights are not copied. The view's parameters are new
        ``Parameter`` objects over the same storage, so a session freezing or unfreezing
        its own does not touch another's flags.
        """
        from kitchen.adapters.local.models.state_dict import clean_config, model_from_state_dict

        base = self.model
        config = clean_config(base.config)
        attn = getattr(base.config, "_attn_implementation", None)
        if attn:
            config._attn_implementation = attn
        model = model_from_state_dict(config, base.state_dict(), buffers_from=base, dtype=base.dtype)
        model.eval()
        model._kitchen_shared_base = self  # keeps the shared weights registered while the view lives
        return model, copy.deepcopy(self.tokenizer), dict(self.info)


_lock = threading.Lock()
_bases: "dict[tuple, weakref.ref[SharedBase]]" = {}


def _key(name: str, *, cache_dir: Any, dtype: Any, device: str, revision: str | None, chat_template: Any,
         commit: str | None) -> tuple:
    from kitchen.adapters.local.models.resolve import resolve_model

    resolved = resolve_model(name, revision)
    template = str(Path(chat_template).expanduser().resolve()) if chat_template else None
    return (resolved.name, revision, commit, str(dtype), str(device), template, str(cache_dir or ""))


def acquire(name: str, *, cache_dir: Any = None, dtype: Any = "float32", device: str = "cpu",
            revision: str | None = None, chat_template: Any = None, commit: str | None = None) -> SharedBase:
    """The process's shared copy of this base model, loading it on first use.

    Loading happens under the registry lock, so two sessions that start at once over the
    same model load it once (the second waits for the first).
    """
    from kitchen.adapters.local.models.load import load_model

    key = _key(name, cache_dir=cache_dir, dtype=dtype, device=device, revision=revision, chat_template=chat_template,
               commit=commit)
    with _lock:
        ref = _bases.get(key)
        shared = ref() if ref is not None else None
        if shared is not None:
            return shared
        model, tokenizer, info = load_model(name, cache_dir=cache_dir, dtype=dtype, device=device, revision=revision,
                                            chat_template=chat_template, commit=commit)
        for p in model.parameters():
            p.requires_grad_(False)
        shared = SharedBase(model, tokenizer, info, key)
        _bases[key] = weakref.ref(shared, lambda _r, k=key: _forget(k, _r))
        return shared


def _forget(key: tuple, ref: Any) -> None:
    # Called by the garbage collector (any thread); only drop the entry if it is still ours.
    if _bases.get(key) is ref:
        _bases.pop(key, None)


def module_tensors(module: Any) -> list[Any]:
    """Every parameter and buffer of a torch module (empty for None)."""
    if module is None:
        return []
    return [*module.parameters(), *module.buffers()]


def distinct_tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors``.

    A storage shared by several models (a shared base, tied embeddings) counts once, so
    this is what the weights really cost in memory, whatever the number of sessions.
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        ident = (str(t.device), storage.data_ptr())
        if storage.data_ptr() == 0 or ident in seen:
            continue
        seen.add(ident)
        total += storage.nbytes()
    return total
