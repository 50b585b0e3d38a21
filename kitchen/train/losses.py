"""Loss functions with Tinker's definitions, as pure functions on tensors.

All losses are *sums* over tokens (not means), exactly like Tinker:

* ``cross_entropy``:       ``-(weights * target_logprobs).sum()``
* ``importance_sampling``: ``-(exp(target_logprobs - sampler_logprobs) * advantages).sum()``
* ``ppo``:                 ``-min(r * A, clip(r, low_threshold, high_threshold) * A).sum()``
  with ``r = exp(target_logprobs - sampler_logprobs)``. As in Tinker, the
  ``loss_fn_config`` keys ``clip_low_threshold`` / ``clip_high_threshold`` are the ratio
  bounds themselves, default 0.8 and 1.2 (i.e. ``1 -/+ 0.2``); e.g. ``{"clip_low_threshold":
  0.9, "clip_high_threshold": 1.1}`` clips tighter.

One clip convention: in kitchen's own code ``clip_low`` / ``clip_high`` are always
*epsilons* around a ratio of 1 (:data:`CLIP_LOW`, :data:`CLIP_HIGH`; the ratio is kept in
``[1 - clip_low, 1 + clip_high]``, see :func:`kitchen.train.rl.ppo_loss_fn_config`). The
ratio bounds themselves are only ever called thresholds, as on the wire.

Inputs are same-shape tensors (any shape; padding positions must carry weight 0 /
advantage 0). Each function returns a :class:`LossOutput` of tensors: no host sync
happens here, the caller reads all reported numbers in one transfer.

The *reported* loss (``LossOutput.mean``) is a per-token mean: for cross_entropy the
weighted mean NLL (``sum / sum(weights)``), for the RL losses ``sum / #tokens with a
nonzero advantage``. torch is imported lazily (only when a function runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kitchen.errors import ConfigError
from kitchen.ports.types import LOSS_FNS

CLIP_LOW = 0.2  # PPO clip epsilon below a ratio of 1 (kitchen's clip_low)
CLIP_HIGH = 0.2  # PPO clip epsilon above a ratio of 1 (kitchen's clip_high)
DEFAULT_LOW_THRESHOLD = 1.0 - CLIP_LOW  # 0.8: the ratio lower bound (Tinker's clip_low_threshold)
DEFAULT_HIGH_THRESHOLD = 1.0 + CLIP_HIGH  # 1.2: the ratio upper bound (Tinker's clip_high_threshold)


@dataclass
class LossOutput:
    loss: Any  # scalar tensor: the sum that is differentiated
    num_tokens: Any  # scalar tensor: weighted token count (CE) / count of nonzero advantages (RL)
    extra: dict[str, Any] = field(default_factory=dict)  # scalar tensors (e.g. clip_fraction)

    @property
    def mean(self):
        return self.loss.detach() / self.num_tokens.clamp_min(1e-12) if self.num_tokens is not None else self.loss


def cross_entropy(target_logprobs, weights) -> LossOutput:
    w = weights.to(target_logprobs.dtype)
    loss = -(w * target_logprobs).sum()
    return LossOutput(loss, w.sum().detach())


def importance_sampling(target_logprobs, sampler_logprobs, advantages) -> LossOutput:
    a = advantages.to(target_logprobs.dtype)
    ratio = (target_logprobs - sampler_logprobs.to(target_logprobs.dtype)).exp()
    loss = -(ratio * a).sum()
    return LossOutput(loss, (a != 0).sum().to(target_logprobs.dtype))


def ppo(
    target_logprobs,
    sampler_logprobs,
    advantages,
    low_threshold: float = DEFAULT_LOW_THRESHOLD,
    high_threshold: float = DEFAULT_HIGH_THRESHOLD,
) -> LossOutput:
    """Tinker's ``ppo``: the ratio clipped to the bounds ``[low_threshold, high_threshold]`` (0.8, 1.2)."""
    import torch

    a = advantages.to(target_logprobs.dtype)
    ratio = (target_logprobs - sampler_logprobs.to(target_logprobs.dtype)).exp()
    clipped = ratio.clamp(low_threshold, high_threshold)
    unclipped_obj = ratio * a
    clipped_obj = clipped * a
    loss = -torch.minimum(unclipped_obj, clipped_obj).sum()
    mask = a != 0
    n = mask.sum().to(target_logprobs.dtype)
    # tokens where the clipped branch is the active one (its gradient is zero)
    was_clipped = (clipped_obj < unclipped_obj) & mask
    clip_fraction = was_clipped.sum().to(target_logprobs.dtype) / n.clamp_min(1.0)
    return LossOutput(loss, n, {"clip_fraction": clip_fraction.detach()})


REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
}


def check_loss_fn(loss_fn: str) -> None:
    if loss_fn not in LOSS_FNS:
        from kitchen.errors import did_you_mean

        raise ConfigError(f"Unknown loss_fn '{loss_fn}'; choose one of {', '.join(LOSS_FNS)}." + did_you_mean(loss_fn, LOSS_FNS))


def compute_loss(
    loss_fn: str,
    target_logprobs,
    inputs: Mapping[str, Any],
    loss_fn_config: Mapping[str, float] | None = None,
) -> LossOutput:
    """Dispatch on ``loss_fn``; ``inputs`` holds tensors shaped like ``target_logprobs``."""
    check_loss_fn(loss_fn)
    cfg = dict(loss_fn_config or {})
    if loss_fn == "cross_entropy":
        return cross_entropy(target_logprobs, inputs["weights"])
    if loss_fn == "importance_sampling":
        return importance_sampling(target_logprobs, inputs["logprobs"], inputs["advantages"])
    unknown = set(cfg) - {"clip_low_threshold", "clip_high_threshold"}
    if unknown:
        raise ConfigError(
            f"Unknown ppo loss_fn_config keys: {', '.join(sorted(unknown))} "
            "(known: clip_low_threshold, clip_high_threshold)."
        )
    lo = float(cfg.get("clip_low_threshold", DEFAULT_LOW_THRESHOLD))
    hi = float(cfg.get("clip_high_threshold", DEFAULT_HIGH_THRESHOLD))
    if not 0.0 <= lo <= 1.0 <= hi:
        raise ConfigError(
            f"ppo clip thresholds are ratio bounds (Tinker's convention): need 0 <= clip_low_threshold "
            f"<= 1 <= clip_high_threshold, got {lo} and {hi} (the default is 0.8 and 1.2)."
        )
    return ppo(
        target_logprobs,
        inputs["logprobs"],
        inputs["advantages"],
        lo,
        hi,
    )
