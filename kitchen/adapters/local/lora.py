"""LoRA setup of the local backend: which modules get adapters, and the model made trainable.

:func:`make_trainable` returns a :class:`Trainable`: the PEFT model (LoRA) or the model
with every weight trainable (``lora.rank == 0``), the adapted module names and the
warnings the run reports (``run.warning`` events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kitchen.errors import ConfigError

ATTN_HINTS = ("attn", "attention")
MLP_HINTS = ("mlp", "feed_forward", "ffn")
UNEMBED_NAMES = ("lm_head", "embed_out", "output")


@dataclass
class Trainable:
    """The model to train and how: ``lora`` False means full fine-tuning (``targets`` is None)."""

    model: Any
    lora: bool
    targets: list[str] | None = None
    warnings: list[str] = field(default_factory=list)


def make_trainable(model: Any, lora: Any, *, seed: int, device: str) -> Trainable:
    """LoRA adapters over ``model`` (``lora``: a LoraConfig), or every weight trainable (rank 0).

    The adapters' initial values depend on ``seed`` only. A rank too large to allocate
    is a ConfigError naming the model's hidden size.
    """
    import torch

    warnings_out: list[str] = []  # surfaced as run.warning events by the session stage
    if lora.rank and lora.rank > 0:
        import peft

        hidden = int(getattr(model.config, "hidden_size", 0) or 0)
        if hidden and lora.rank > hidden:
            warnings_out.append(
                f"lora_rank={lora.rank} is larger than the model's hidden size ({hidden}): the adapter cannot "
                f"have a higher rank than {hidden}, so the extra rank only costs memory and time. "
                f"Use lora_rank <= {hidden} (or lora_rank=0 for full fine-tuning)."
            )

        targets = target_modules(model, lora)
        torch.manual_seed(seed)  # LoRA init depends on the seed only
        pcfg = peft.LoraConfig(
            r=int(lora.rank),
            lora_alpha=float(lora.alpha if lora.alpha is not None else 2 * lora.rank),
            lora_dropout=float(lora.dropout),
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tied-embedding notes when lm_head is a target
            try:
                model = peft.get_peft_model(model, pcfg)
            except (MemoryError, RuntimeError) as exc:  # a rank too large to allocate
                if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower() and "out of memory" not in str(exc).lower():
                    raise
                raise ConfigError(
                    f"lora_rank={lora.rank} is too large: the adapter matrices do not fit in memory on {device} "
                    f"({str(exc).splitlines()[0][:160]}). Use a smaller lora_rank (the model's hidden size is "
                    f"{hidden or 'unknown'}; ranks of 8-64 are typical)."
                ) from None
        return Trainable(model=model, lora=True, targets=targets, warnings=warnings_out)
    if lora.rank < 0:
        raise ConfigError(f"lora.rank must be >= 0 (0 = full fine-tuning), got {lora.rank}.")
    for p in model.parameters():
        p.requires_grad_(True)
    return Trainable(model=model, lora=False, warnings=warnings_out)


def target_modules(model: Any, lora: Any) -> list[str]:
    """The module names LoRA adapts: ``lora.target_modules`` or, for ``all-linear``, the
    body's attention and/or MLP linears (``train_attn`` / ``train_mlp``), plus the
    unembedding when ``train_unembed``."""
    import torch

    linear_names: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            linear_names.append(name)
    unembed = [n for n in linear_names if n.split(".")[-1] in UNEMBED_NAMES]
    body = [n for n in linear_names if n not in unembed]
    tm = lora.target_modules
    if isinstance(tm, str) and tm != "all-linear":
        tm = [tm]
    if tm == "all-linear":
        chosen: set[str] = set()
        for n in body:
            low = n.lower()
            is_attn = any(h in low for h in ATTN_HINTS)
            is_mlp = any(h in low for h in MLP_HINTS)
            if (is_attn and lora.train_attn) or (is_mlp and lora.train_mlp) or (
                not is_attn and not is_mlp and lora.train_attn and lora.train_mlp
            ):
                chosen.add(n.split(".")[-1])
        targets = sorted(chosen)
    else:
        targets = [str(t) for t in tm]
    if lora.train_unembed:
        targets += sorted({n.split(".")[-1] for n in unembed} - set(targets))
    if not targets:
        raise ConfigError(
            "LoRA has nothing to train: train_mlp, train_attn and train_unembed are all off "
            "(or target_modules is empty). Enable one, or set lora.rank=0 for full fine-tuning."
        )
    return targets
