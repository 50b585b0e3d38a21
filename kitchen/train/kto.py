"""KTO (Ethayarajh et al. 2024) on unpaired data: the loss and its exact per-sequence gradient (no I/O).

Each example is one completion with a label: desirable (``True``) or undesirable. With
``r_i = p_i - ref_i`` (summed completion logprobs, policy minus frozen reference, as TRL's
KTOTrainer uses them) and a *detached* reference point ``z0``::

    desirable:    L_i = λ_D * (1 - σ(β (r_i - z0)))
    undesirable:  L_i = λ_U * (1 - σ(β (z0 - r_i)))
    L = mean_i L_i                       (over all N examples of the batch, as TRL)

``z0`` estimates KL(π_θ || π_ref) from the batch: the mean of ``p - ref`` over
*mismatched* (prompt, completion) pairs, the prompt of example ``i`` with the completion
of example ``(i + 1) mod N`` (TRL pairs shifted completions the same way), clamped at 0
and held constant. With a single example there is no mismatched pair and ``z0 = 0``.
Its policy logprobs come from the same forward as the batch's; it carries no gradient.

Gradient w.r.t. the summed logprob ``p_i`` (``dr_i/dp_i = 1``), with ``s = σ(β (r_i - z0))``
for a desirable and ``s = σ(β (z0 - r_i))`` for an undesirable example::

    desirable:    dL/dp_i = -λ_D β s (1 - s) / N
    undesirable:  dL/dp_i = +λ_U β s (1 - s) / N

so the cross_entropy surrogate weight on every completion token is ``w_i = -dL/dp_i``
(see :mod:`kitchen.train.dpo` for why that gives the exact gradient). TRL flag:
``KTOConfig(beta, desirable_weight, undesirable_weight)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from kitchen.train.dpo import sigmoid


class KTOResult(NamedTuple):
    loss: float
    kl: float  # z0, the clamped batch KL estimate
    desirable_reward: float  # mean β r over desirable examples (0 when none)
    undesirable_reward: float  # mean β r over undesirable examples (0 when none)
    desirable: int
    grads: list[float]  # dL/dp_i per example

    def weights(self, scale: float = 1.0) -> list[float]:
        """Cross_entropy weights ``w_i = -scale * dL/dp_i``."""
        return [-scale * g for g in self.grads]


def kl_estimate(kl_policy: Sequence[float], kl_ref: Sequence[float]) -> float:
    """``z0 = max(0, mean(p - ref))`` over mismatched pairs; 0 when there are none."""
    if len(kl_policy) != len(kl_ref):
        raise ValueError(f"length mismatch: kl_policy={len(kl_policy)}, kl_ref={len(kl_ref)}")
    if not kl_policy:
        return 0.0
    return max(0.0, sum(p - r for p, r in zip(kl_policy, kl_ref)) / len(kl_policy))


def mismatched(n: int) -> list[tuple[int, int]]:
    """(prompt of i, completion of j) pairs for the KL estimate: ``j = (i + 1) mod n``; none for ``n < 2``."""
    return [(i, (i + 1) % n) for i in range(n)] if n >= 2 else []


def kto_loss(policy: Sequence[float], ref: Sequence[float], labels: Sequence[bool], z0: float, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> KTOResult:
    """The KTO loss, metrics and ``dL/dp`` per example (module doc for the formulas)."""
    n = len(policy)
    if len(ref) != n or len(labels) != n:
        raise ValueError(f"length mismatch: policy={n}, ref={len(ref)}, labels={len(labels)}")
    if n == 0:
        raise ValueError("KTO needs at least one example")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    total, grads, good, bad = 0.0, [], [], []
    for p, q, label in zip(policy, ref, labels):
        r = float(p) - float(q)
        if label:
            s = sigmoid(beta * (r - z0))
            total += desirable_weight * (1.0 - s)
            grads.append(-desirable_weight * beta * s * (1.0 - s) / n)
            good.append(beta * r)
        else:
            s = sigmoid(beta * (z0 - r))
            total += undesirable_weight * (1.0 - s)
            grads.append(undesirable_weight * beta * s * (1.0 - s) / n)
            bad.append(beta * r)
    return KTOResult(total / n, z0, sum(good) / len(good) if good else 0.0, sum(bad) / len(bad) if bad else 0.0,
                     len(good), grads)


__all__ = ["KTOResult", "kl_estimate", "kto_loss", "mismatched"]
