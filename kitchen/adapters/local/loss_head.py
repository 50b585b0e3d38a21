"""How a local pass turns hidden states into the targets' log-probabilities.

Two ways, one contract (``[B, T]`` fp32 logprobs of ``batch["target_tokens"]``):

* **one pass** (``loss_chunk_tokens=null``): the model computes its full logits and the
  logprobs come from them; ``tokens x vocabulary`` floats live until backward is done;
* **chunked** (the default): the model runs with ``logits_to_keep`` empty, so it computes
  no logits at all; a forward hook on its decoder keeps the final hidden states, and
  :func:`kitchen.train.chunked_logprobs.target_logprobs` projects them through the output
  layer a chunk of tokens at a time.

The chunked path assumes the logits are exactly ``output_layer(final_hidden)``. Some
architectures transform them afterwards (Gemma-2's soft-capping, Cohere's logit scale), so
:func:`plan_loss_head` checks that on a few tokens when the session starts and keeps the
one-pass path, saying why, when the two disagree. FSDP2 shards the output layer's weights
outside its own forward, so it keeps the one-pass path too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from kitchen.train.chunked_logprobs import target_logprobs

CHECK_TOLERANCE = 1e-3  # logprob difference (nats) beyond which the model is not head(hidden)


FUSED_LOSSES = ("auto", "none", "liger", "cut_cross_entropy")
KERNEL_PACKAGES = {"liger": ("liger_kernel", "liger-kernel", "liger"),
                   "cut_cross_entropy": ("cut_cross_entropy", "cut-cross-entropy", "cce")}
AUTO_ORDER = ("cut_cross_entropy", "liger")  # CCE recomputes in backward: exact for any loss on the logprobs


def kernel_installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(KERNEL_PACKAGES[name][0]) is not None


def choose_fused(fused: Any, device: str) -> tuple[str | None, str | None]:
    """The fused kernel a session uses (None: the torch path) and a note saying why, or a ConfigError.

    ``auto`` takes the first installed kernel on CUDA and falls back to the chunked torch
    path otherwise, saying so; naming a kernel that is not installed, or one on the CPU
    (both are Triton/CUDA kernels), is refused.
    """
    from kitchen.errors import ConfigError

    name = str(fused if fused is not None else "auto").strip().lower()
    if name not in FUSED_LOSSES:
        raise ConfigError(f"fused_loss={fused!r} is not allowed: use auto (a fused kernel on CUDA when one is installed, "
                          "else the chunked torch path), none (the torch path), liger or cut_cross_entropy.")
    on_cuda = str(device).startswith("cuda")
    if name == "none":
        return None, None
    if name == "auto":
        if not on_cuda:
            return None, "fused_loss=auto: no fused kernel on the CPU, the chunked torch path computes the loss"
        for kernel in AUTO_ORDER:
            if kernel_installed(kernel):
                return kernel, f"fused_loss=auto: {kernel} ({KERNEL_PACKAGES[kernel][1]} is installed)"
        return None, ("fused_loss=auto: neither liger-kernel nor cut-cross-entropy is installed, the chunked torch path "
                      "computes the loss (pip install 'crucible-kitchen[cce]' or '[liger]' for a fused kernel)")
    module, package, extra = KERNEL_PACKAGES[name]
    if not kernel_installed(name):
        raise ConfigError(f"fused_loss={name} needs the {package} package, which is not installed here: pip install "
                          f"'crucible-kitchen[{extra}]' (a CUDA GPU is needed to run it), or use fused_loss=auto (the "
                          "kernel when installed, else the chunked torch path) or fused_loss=none.")
    if not on_cuda:
        raise ConfigError(f"fused_loss={name} is a CUDA (Triton) kernel and this run is on the CPU (device={device}): "
                          "use fused_loss=auto or none, which compute the loss in chunks in torch.")
    return name, f"fused_loss={name}"


@dataclass
class LossHead:
    """``chunk_tokens`` rows of logits at a time, or None for one pass (``why_not`` says why, when asked for).

    ``fused`` names a fused linear cross-entropy kernel (CUDA) that replaces the chunked
    projection; ``fused_note`` says what ``fused_loss`` chose and why.
    """

    chunk_tokens: int | None = None
    why_not: str | None = None
    fused: str | None = None
    fused_note: str | None = None

    def facts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fused_loss": self.fused or "none"}
        if self.fused_note:
            out["fused_loss_note"] = self.fused_note
        if self.chunk_tokens:
            return {"loss_chunk_tokens": self.chunk_tokens, **out}
        return {"loss_chunk_tokens": None, **({"loss_chunking_off": self.why_not} if self.why_not else {}), **out}

    def target_logprobs(self, pass_model: Any, model: Any, batch: dict[str, Any], autocast: Any) -> Any:
        """The targets' logprobs of ``batch`` through ``pass_model`` (``model`` is it unwrapped)."""
        kwargs = {"input_ids": batch["input_ids"], "use_cache": False}
        if "position_ids" in batch:
            kwargs["position_ids"] = batch["position_ids"]
        targets = batch["target_tokens"]
        if not self.chunk_tokens:
            return _one_pass(pass_model, kwargs, targets, autocast)
        with autocast():
            hidden = final_hidden(pass_model, model, kwargs)
            if self.fused:
                return fused_logprobs(self.fused, hidden, model.get_output_embeddings(), targets)
        # the vocabulary projection and its log-sum-exp in fp32 even under bf16 autocast: bf16 logits (8 bits of
        # mantissa) put ~0.05 nats of noise on each logprob, enough to destabilise training at high learning rates
        return target_logprobs(hidden.float(), model.get_output_embeddings(), targets, self.chunk_tokens)


def fused_logprobs(kernel: str, hidden: Any, head: Any, targets: Any) -> Any:
    """``[B, T]`` fp32 target logprobs from a fused linear cross-entropy kernel (CUDA; no logits are materialised)."""
    import torch

    weight = head.weight
    bias = getattr(head, "bias", None)
    B, T, H = hidden.shape
    x = hidden.reshape(B * T, H)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    elif x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    flat = targets.reshape(B * T)
    if kernel == "cut_cross_entropy":
        from cut_cross_entropy import linear_cross_entropy

        nll = linear_cross_entropy(x, weight, flat, bias=bias, reduction="none")
    else:  # liger
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        nll = liger_fused_linear_cross_entropy(x, weight, flat, bias=bias, reduction="none")
        nll = nll[0] if isinstance(nll, tuple) else nll
    return -nll.float().reshape(B, T)


def _one_pass(pass_model: Any, kwargs: dict[str, Any], targets: Any, autocast: Any) -> Any:
    import torch.nn.functional as F

    with autocast():
        logits = pass_model(**kwargs).logits
    B, T, V = logits.shape
    lp = -F.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T), reduction="none").reshape(B, T)
    del logits
    return lp


def final_hidden(pass_model: Any, model: Any, kwargs: dict[str, Any]) -> Any:
    """The decoder's last hidden states ([B, T, H], after its final norm), with no logits computed.

    The hook keeps only this thread's forward: rollout lanes score on one shared sampler
    model from several threads at once, and a module's hooks fire for every thread's pass.
    """
    import threading

    import torch

    kept: dict[str, Any] = {}
    me = threading.get_ident()

    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        if threading.get_ident() == me:
            kept["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = model.get_decoder().register_forward_hook(keep)
    try:
        pass_model(**kwargs, logits_to_keep=torch.empty(0, dtype=torch.long, device=kwargs["input_ids"].device))
    finally:
        handle.remove()
    return kept["hidden"]


def plan_loss_head(model: Any, chunk_tokens: int | None, *, fsdp: bool = False, device: str = "cpu",
                   fused: Any = "none") -> LossHead:
    """The loss head for ``model``: chunked (or a fused kernel) when asked for and the logits are ``head(hidden)``."""
    kernel, note = choose_fused(fused, device)
    head = _plan_loss_head(model, chunk_tokens, fsdp=fsdp, device=device)
    if kernel and head.chunk_tokens:  # the kernel replaces the chunked projection, where that path is exact
        head.fused, head.fused_note = kernel, note
    elif kernel:
        head.fused_note = f"{note}, not used: {head.why_not or 'loss_chunk_tokens=null asks for one pass'}"
    else:
        head.fused_note = note
    return head


def _plan_loss_head(model: Any, chunk_tokens: int | None, *, fsdp: bool = False, device: str = "cpu") -> LossHead:
    if not chunk_tokens:
        return LossHead(None)
    causal = _causal_lm(model)
    name = type(causal).__name__
    if fsdp:
        return LossHead(None, "FSDP2 shards the output layer, so the logits are computed in one pass")
    if "logits_to_keep" not in inspect.signature(causal.forward).parameters:
        return LossHead(None, f"{name} takes no logits_to_keep, so it always computes full logits")
    if not hasattr(model, "get_decoder") or model.get_output_embeddings() is None:
        return LossHead(None, f"{name} exposes no decoder and output layer to chunk")
    head = LossHead(chunk_tokens)
    gap = _gap(model, head, device)
    if gap is None or gap > CHECK_TOLERANCE:
        return LossHead(None, f"{name} changes its logits after the output layer (the chunked logprobs differed by "
                              f"{gap if gap is not None else 'an error'}), so they are computed in one pass")
    return head


def _causal_lm(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _gap(model: Any, head: LossHead, device: str) -> float | None:
    """The largest difference between the two paths on a few tokens (None if the chunked one fails)."""
    import contextlib

    import torch

    vocab = int(model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, 8), generator=g).to(device)
    batch = {"input_ids": ids, "target_tokens": torch.roll(ids, -1, dims=1)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = LossHead(None).target_logprobs(model, model, batch, contextlib.nullcontext)
            chunked = head.target_logprobs(model, model, batch, contextlib.nullcontext)
        return float((full - chunked).abs().max())
    except Exception:  # noqa: BLE001 - any failure means: keep the one-pass path (the reason is reported)
        return None
    finally:
        model.train(was_training)


__all__ = ["FUSED_LOSSES", "LossHead", "choose_fused", "final_hidden", "fused_logprobs", "plan_loss_head"]
