"""Target log-probabilities without a [tokens x vocabulary] logits tensor.

Every loss kitchen trains with (cross-entropy, importance sampling, PPO, DPO, distillation)
reads one number per token: the log-probability of the target token. Computing it from the
full logits costs ``tokens x vocabulary`` floats, twice over once autograd keeps the
softmax for backward; on SmolLM2's 49,152-entry vocabulary that is most of a step's memory.

Here the final hidden states are projected to the vocabulary ``chunk_tokens`` rows at a
time. Each chunk gives its targets' logprob (the target logit minus the log-sum-exp) and
its logits are freed at once. Under autograd each chunk is checkpointed: backward
recomputes that chunk's logits, takes their gradient and frees them before the next, so
at most one chunk's logits is alive at any moment. The numbers equal the one-pass
``-cross_entropy(logits, targets)`` within fp32 rounding.

Pure math (torch only, no I/O); the local backend decides when to use it.
"""

from __future__ import annotations

from typing import Any, Callable


def check_chunk_tokens(value: Any) -> int | None:
    """``loss_chunk_tokens`` as the trainer takes it: a positive int, or None for one pass."""
    from kitchen.errors import ConfigError

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"loss_chunk_tokens={value!r} is not allowed: give a positive whole number of tokens per chunk of the "
            "loss (e.g. 1024), or null to compute the logits of a whole micro-batch in one pass."
        )
    return value


def _chunk_logprobs(head: Callable[[Any], Any], hidden: Any, targets: Any) -> Any:
    import torch

    logits = head(hidden).float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def target_logprobs(hidden: Any, head: Callable[[Any], Any], targets: Any, chunk_tokens: int) -> Any:
    """``log p(targets)`` for ``hidden`` ([..., H]) through ``head`` (hidden -> logits), shaped like ``targets``.

    ``head`` is the model's output layer (a LoRA-wrapped one trains too: its parameters get
    their gradients through the recomputation).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    shape = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    grad = torch.is_grad_enabled()
    pieces = []
    for start in range(0, flat_targets.shape[0], chunk_tokens):
        h = flat_hidden[start:start + chunk_tokens]
        t = flat_targets[start:start + chunk_tokens]
        if grad:  # keep only h and t for backward; the chunk's logits are recomputed there
            pieces.append(checkpoint(_chunk_logprobs, head, h, t, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(head, h, t))
    if not pieces:
        return flat_hidden.new_zeros(shape, dtype=torch.float32)
    return torch.cat(pieces).reshape(shape)


__all__ = ["check_chunk_tokens", "target_logprobs"]
