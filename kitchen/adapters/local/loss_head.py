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


@dataclass
class LossHead:
    """``chunk_tokens`` rows of logits at a time, or None for one pass (``why_not`` says why, when asked for)."""

    chunk_tokens: int | None = None
    why_not: str | None = None

    def facts(self) -> dict[str, Any]:
        if self.chunk_tokens:
            return {"loss_chunk_tokens": self.chunk_tokens}
        return {"loss_chunk_tokens": None, **({"loss_chunking_off": self.why_not} if self.why_not else {})}

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
            return target_logprobs(hidden, model.get_output_embeddings(), targets, self.chunk_tokens)


def _one_pass(pass_model: Any, kwargs: dict[str, Any], targets: Any, autocast: Any) -> Any:
    import torch.nn.functional as F

    with autocast():
        logits = pass_model(**kwargs).logits
    B, T, V = logits.shape
    lp = -F.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T), reduction="none").reshape(B, T)
    del logits
    return lp


def final_hidden(pass_model: Any, model: Any, kwargs: dict[str, Any]) -> Any:
    """The decoder's last hidden states ([B, T, H], after its final norm), with no logits computed."""
    import torch

    kept: dict[str, Any] = {}

    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        kept["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = model.get_decoder().register_forward_hook(keep)
    try:
        pass_model(**kwargs, logits_to_keep=torch.empty(0, dtype=torch.long, device=kwargs["input_ids"].device))
    finally:
        handle.remove()
    return kept["hidden"]


def plan_loss_head(model: Any, chunk_tokens: int | None, *, fsdp: bool = False, device: str = "cpu") -> LossHead:
    """The loss head for ``model``: chunked when asked for and the model's logits are ``head(hidden)``."""
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


__all__ = ["LossHead", "final_hidden", "plan_loss_head"]
