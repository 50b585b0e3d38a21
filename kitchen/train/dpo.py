"""DPO math: the loss and metrics, and a way to train DPO through plain cross_entropy.

Inputs are per-sequence *summed* logprobs of each pair's completion (chosen / rejected)
under the policy and under the frozen reference. With
``h_i = (pc_i - rc_i) - (pr_i - rr_i)`` (the pair's margin in logit space)::

    loss = mean_i( -log sigmoid(beta * h_i) ) = mean_i( softplus(-beta * h_i) )

Training through a backend that only has Tinker's built-in losses
----------------------------------------------------------------
Let ``N`` pairs and ``s_i = sigmoid(-beta * h_i)``. Differentiating the loss w.r.t.
each sequence logprob (the only things that depend on the policy parameters θ)::

    dL/dpc_i = -(beta / N) * s_i          dL/dpr_i = +(beta / N) * s_i

so by the chain rule ``∇θ L = Σ_i [ -(beta/N) s_i ∇θ pc_i + (beta/N) s_i ∇θ pr_i ]``.

The ``cross_entropy`` loss is ``-Σ_datums Σ_t weights_t * logp_θ(target_t)``. Put every
completion token of the chosen sequence of pair ``i`` at weight ``w_c,i`` and every
completion token of the rejected one at ``w_r,i`` (prompt tokens 0). As
``pc_i = Σ_{t in completion} logp_θ(t)``, that surrogate is
``S(θ) = -Σ_i (w_c,i * pc_i(θ) + w_r,i * pr_i(θ))`` and
``∇θ S = -Σ_i (w_c,i ∇θ pc_i + w_r,i ∇θ pr_i)``. Matching the two gradients term by term::

    w_c,i = +(beta / N) * sigmoid(-beta * h_i)
    w_r,i = -(beta / N) * sigmoid(-beta * h_i)

(``reduction="sum"`` drops the ``1/N``, giving the gradient of the summed DPO loss.)

The weights must be computed from the policy logprobs at the *current* parameters (one
``forward`` pass first) and then held constant: ``∇S = ∇L`` holds exactly at that θ,
which is all one ``forward_backward`` + ``optim_step`` needs. This is the same linear
surrogate that tinker-cookbook's ``forward_backward_custom`` backpropagates. The
surrogate's *value* is meaningless; report ``dpo_loss(...)`` instead.

Backend caveat: the weights of a pair sum to zero, so this needs a cross_entropy that is
a plain weighted *sum* (Tinker's). A backend that divides by the sum of weights cannot
do it; one that divides by a constant (e.g. the token count ``T``) gives the DPO
gradient scaled by ``1/T``: pass ``scale=T`` to undo that.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from kitchen.ports.types import Datum

PREFERENCE_LOSSES: tuple[str, ...] = ("dpo", "simpo", "orpo")  # the preference workflow's loss= choices


def log_sigmoid(x: float) -> float:
    """Numerically stable ``log(sigmoid(x))``."""
    if x >= 0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _check_inputs(
    policy_chosen: Sequence[float],
    policy_rejected: Sequence[float],
    ref_chosen: Sequence[float],
    ref_rejected: Sequence[float],
    beta: float,
) -> int:
    n = len(policy_chosen)
    lengths = (n, len(policy_rejected), len(ref_chosen), len(ref_rejected))
    if len(set(lengths)) != 1:
        raise ValueError(
            "length mismatch: policy_chosen={}, policy_rejected={}, ref_chosen={}, ref_rejected={}".format(*lengths)
        )
    if n == 0:
        raise ValueError("DPO needs at least one pair")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    return n


def dpo_margins(
    policy_chosen: Sequence[float],
    policy_rejected: Sequence[float],
    ref_chosen: Sequence[float],
    ref_rejected: Sequence[float],
) -> list[float]:
    """``h_i = (pc_i - rc_i) - (pr_i - rr_i)`` per pair (no beta)."""
    return [
        (pc - rc) - (pr - rr) for pc, pr, rc, rr in zip(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    ]


class DPOResult(NamedTuple):
    loss: float  # mean(-logsigmoid(beta * h))
    accuracy: float  # fraction of pairs with chosen_reward > rejected_reward (ties count as wrong)
    margin: float  # mean(chosen_reward - rejected_reward) = beta * mean(h)
    chosen_reward: float  # mean(beta * (pc - rc))
    rejected_reward: float  # mean(beta * (pr - rr))

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}dpo_loss": self.loss,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}margin": self.margin,
            f"{prefix}chosen_reward": self.chosen_reward,
            f"{prefix}rejected_reward": self.rejected_reward,
        }


def dpo_loss(
    policy_chosen: Sequence[float],
    policy_rejected: Sequence[float],
    ref_chosen: Sequence[float],
    ref_rejected: Sequence[float],
    beta: float,
) -> DPOResult:
    """DPO loss and metrics from per-sequence summed logprobs (one entry per pair)."""
    n = _check_inputs(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    chosen_rewards = [beta * (pc - rc) for pc, rc in zip(policy_chosen, ref_chosen)]
    rejected_rewards = [beta * (pr - rr) for pr, rr in zip(policy_rejected, ref_rejected)]
    diffs = [c - r for c, r in zip(chosen_rewards, rejected_rewards)]
    return DPOResult(
        loss=sum(-log_sigmoid(d) for d in diffs) / n,
        accuracy=sum(1 for d in diffs if d > 0) / n,
        margin=sum(diffs) / n,
        chosen_reward=sum(chosen_rewards) / n,
        rejected_reward=sum(rejected_rewards) / n,
    )


class DPOWeights(NamedTuple):
    chosen: list[float]  # cross_entropy weight for every completion token of each chosen sequence
    rejected: list[float]  # the same for each rejected sequence (negative)


def dpo_token_weights(
    policy_chosen: Sequence[float],
    policy_rejected: Sequence[float],
    ref_chosen: Sequence[float],
    ref_rejected: Sequence[float],
    beta: float,
    reduction: str = "mean",
    scale: float = 1.0,
) -> DPOWeights:
    """Per-sequence cross_entropy weights whose gradient equals the DPO gradient.

    ``w_c,i = scale * beta * sigmoid(-beta * h_i) / N`` and ``w_r,i = -w_c,i`` (``/ N``
    only for ``reduction="mean"``, matching ``dpo_loss``). Put ``w`` on every completion
    token of the sequence (``build_weighted_ce_datum``), 0 on prompt tokens, and run
    ``forward_backward(loss_fn="cross_entropy")``. Derivation and caveats: module doc.
    """
    n = _check_inputs(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    denom = n if reduction == "mean" else 1
    hs = dpo_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    w = [scale * beta * sigmoid(-beta * h) / denom for h in hs]
    return DPOWeights(chosen=w, rejected=[-x for x in w])


def build_weighted_ce_datum(prompt_tokens: Sequence[int], completion_tokens: Sequence[int], weight: float) -> Datum:
    """A cross_entropy Datum with ``weight`` on each completion token and 0 on the prompt.

    Layout as everywhere: ``model_input = full[:-1]``, ``target_tokens = full[1:]``,
    ``len(prompt) - 1`` prompt positions then ``len(completion)`` completion positions.
    """
    prompt = [int(t) for t in prompt_tokens]
    completion = [int(t) for t in completion_tokens]
    if not prompt:
        raise ValueError("build_weighted_ce_datum: prompt_tokens is empty")
    if not completion:
        raise ValueError("build_weighted_ce_datum: completion_tokens is empty")
    full = prompt + completion
    p = len(prompt) - 1
    return Datum(
        model_input=full[:-1],
        loss_fn_inputs={"target_tokens": full[1:], "weights": [0.0] * p + [float(weight)] * len(completion)},
    )
