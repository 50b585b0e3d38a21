"""The GRPO family as config: advantage estimators, loss aggregation, KL estimators,
DAPO's overlong shaping, and the per-token policy objective with its exact gradient.

Pure Python over small lists of floats; no torch, no I/O. The workflow's keys map onto
these functions one to one (docs/workflows.md has the table and the references):

``advantage``        :func:`advantages`: ``group_mean`` (today's default, ``r - mean``),
                     ``group_mean_std`` (GRPO: divided by the group's std), ``rloo``
                     (leave-one-out baseline), ``reinforce_pp`` (REINFORCE++-baseline:
                     group-centred, then whitened over the batch's tokens).
``aggregation``      :func:`aggregation_scales`: how per-token losses are summed into the
                     step's loss: ``token_sum`` (today's default, Tinker's sum), ``token_mean``
                     (DAPO: divided by the batch's token count), ``sequence_mean`` (GRPO:
                     a mean over each sequence's tokens, then over sequences).
``kl_estimator``     :func:`kl_value` / :func:`kl_grad`: Schulman's k1, k2, k3 of
                     KL(policy || reference) from one sampled token.
``kl_in``            ``reward``: ``a_t - kl_coef * k(logp_t, logp_ref_t)`` folded into the
                     advantage (today's default with k1); ``loss``: ``kl_coef * k`` added to
                     each token's loss, differentiated through the policy's logprob.
``overlong``         :func:`overlong_penalty` (``soft_punish``, DAPO eq. 13); ``filter``
                     drops truncated samples from the loss (the stage does it).
``loss_fn`` x ``importance_level``, ``clip_low`` / ``clip_high``: :func:`policy_objective`.

Clip convention (one meaning everywhere, as :mod:`kitchen.train.losses`): ``clip_low`` /
``clip_high`` are epsilons around a ratio of 1, the ratio (or CISPO's IS weight) is kept in
``[1 - clip_low, 1 + clip_high]``.

How a step reaches a backend. Every aggregation is a positive per-sequence scale ``c_i`` on
the token losses, and ``importance_sampling`` / ``ppo`` are positively homogeneous in the
advantage (``min(r c A, clip(r) c A) = c min(r A, clip(r) A)`` for ``c > 0``), so with
token-level ratios and the KL in the reward the step is the backend's own ``importance_sampling``
/ ``ppo`` on advantages ``c_i * A_it`` (:func:`scale_advantages`): no extra call. The rest
(``loss_fn=cispo``, ``importance_level=sequence``, ``kl_in=loss``) need the policy's
logprobs at the current weights inside the loss; :func:`policy_objective` takes them (one
``forward``) and returns the loss and ``g_t = dL/dlogp_t``, and the step trains
``cross_entropy`` with weights ``-g_t``: the gradient of ``-sum(w * logp)`` is then exactly
``sum(g * dlogp)`` at these weights. That is what Tinker's ``forward_backward_custom`` does,
and it works on every backend (each has ``forward`` and ``cross_entropy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

from kitchen.train.losses import CLIP_HIGH, CLIP_LOW
from kitchen.train.rl import group_advantages, is_degenerate_group

Advantage = Literal["group_mean", "group_mean_std", "rloo", "reinforce_pp"]
Aggregation = Literal["token_mean", "token_sum", "sequence_mean"]
ImportanceLevel = Literal["token", "sequence"]
KLEstimator = Literal["k1", "k2", "k3"]
KLIn = Literal["reward", "loss"]
Overlong = Literal["none", "filter", "soft_punish"]
PolicyLoss = Literal["importance_sampling", "ppo", "cispo"]

ADVANTAGES: tuple[str, ...] = ("group_mean", "group_mean_std", "rloo", "reinforce_pp")
AGGREGATIONS: tuple[str, ...] = ("token_mean", "token_sum", "sequence_mean")
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
WHITEN_EPS = 1e-8


# --------------------------------------------------------------------------- advantages


def _centred(rewards: Sequence[float]) -> list[float]:
    return group_advantages(rewards)  # r - mean; all zeros for a tied group


def rloo_advantages(rewards: Sequence[float]) -> list[float]:
    """RLOO (Ahmadian et al. 2024): ``a_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean(r))``.

    A tied group, or a group of one (no other sample to be the baseline), gives zeros.

    >>> rloo_advantages([1, 0, 0, 1])
    [0.6666666666666666, -0.6666666666666666, -0.6666666666666666, 0.6666666666666666]
    """
    g = len(rewards)
    if g < 2 or is_degenerate_group(rewards):
        return [0.0] * g
    total = float(sum(rewards))
    return [float(r) - (total - float(r)) / (g - 1) for r in rewards]


def whiten(values: Sequence[Sequence[float]], lengths: Sequence[Sequence[int]] | None = None,
           eps: float = WHITEN_EPS) -> list[list[float]]:
    """``(x - mean) / (std + eps)`` over every entry of every group, each entry weighted by its
    sequence's token count when ``lengths`` is given (REINFORCE++'s batch normalisation is over
    tokens). Population std. All zeros when the batch has no spread."""
    flat = [float(v) for g in values for v in g]
    wts = [float(n) for g in lengths for n in g] if lengths is not None else [1.0] * len(flat)
    if len(wts) != len(flat):
        raise ValueError(f"length mismatch: values={len(flat)}, lengths={len(wts)}")
    total = sum(wts)
    if not flat or total <= 0:
        return [[0.0] * len(g) for g in values]
    mean = sum(w * v for w, v in zip(wts, flat)) / total
    var = sum(w * (v - mean) ** 2 for w, v in zip(wts, flat)) / total
    if var <= 0.0:
        return [[0.0] * len(g) for g in values]
    std = math.sqrt(var) + eps
    return [[(float(v) - mean) / std for v in g] for g in values]


def advantages(groups: Sequence[Sequence[float]], estimator: str = "group_mean",
               lengths: Sequence[Sequence[int]] | None = None) -> list[list[float]]:
    """One advantage per sample, grouped like ``groups`` (one inner list of rewards per prompt).

    ``group_mean``: ``r - mean(r)`` (kitchen's default; Dr. GRPO). ``group_mean_std``:
    ``(r - mean(r)) / (std(r) + 1e-6)``, population std (TRL and verl divide by the
    unbiased std: a constant factor ``sqrt((G-1)/G)`` per group size). ``rloo``: see
    :func:`rloo_advantages`. ``reinforce_pp``: REINFORCE++-baseline (Hu et al. 2025;
    OpenRLHF's ``reinforce_baseline``): ``r - mean(r)`` per group, then whitened over the
    batch's tokens (``lengths``: the sampled-token count of each sample).
    A tied group gives zeros under the first three.
    """
    if estimator == "group_mean":
        return [group_advantages(g) for g in groups]
    if estimator == "group_mean_std":
        return [group_advantages(g, normalize_std=True) for g in groups]
    if estimator == "rloo":
        return [rloo_advantages(g) for g in groups]
    if estimator == "reinforce_pp":
        return whiten([_centred(g) for g in groups], lengths)
    raise ValueError(f"advantage must be one of {', '.join(ADVANTAGES)}, got {estimator!r}")


# --------------------------------------------------------------------------- aggregation


def aggregation_scales(lengths: Sequence[int], aggregation: str = "token_sum") -> list[float]:
    """Per-sequence scale ``c_i`` of every token loss of sequence ``i`` (its ``lengths[i]``
    trained tokens), so the step's loss is ``sum_i c_i sum_t loss_it``.

    ``token_sum``: 1 (Tinker's losses are sums; Dr. GRPO's constant divisor is a learning-rate
    scale). ``token_mean``: ``1 / sum_j n_j`` (DAPO's token-level mean). ``sequence_mean``:
    ``1 / (N * n_i)`` (GRPO's mean over tokens, then over the ``N`` sequences).
    """
    n = [int(x) for x in lengths]
    if aggregation == "token_sum":
        return [1.0] * len(n)
    if aggregation == "token_mean":
        total = sum(n)
        return [1.0 / total if total else 0.0] * len(n)
    if aggregation == "sequence_mean":
        return [1.0 / (len(n) * k) if k else 0.0 for k in n]
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def scale_advantages(token_advantages: Sequence[float], scale: float) -> list[float]:
    """``scale * a`` per token; ``scale == 1`` returns the values untouched (bit for bit)."""
    if scale == 1.0:
        return [float(a) for a in token_advantages]
    return [scale * float(a) for a in token_advantages]


# --------------------------------------------------------------------------- KL estimators


def kl_value(logp: float, ref_logp: float, estimator: str = "k1") -> float:
    """One token's estimate of KL(policy || reference), ``d = ref_logp - logp`` (Schulman 2020):

    ``k1 = -d``, ``k2 = d**2 / 2``, ``k3 = exp(d) - 1 - d`` (unbiased and >= 0; the GRPO paper's).
    """
    d = float(ref_logp) - float(logp)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return math.exp(d) - 1.0 - d
    raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")


def kl_grad(logp: float, ref_logp: float, estimator: str = "k1") -> float:
    """``d kl_value / d logp``: k1 ``1``, k2 ``logp - ref_logp``, k3 ``1 - exp(ref_logp - logp)``."""
    d = float(ref_logp) - float(logp)
    if estimator == "k1":
        return 1.0
    if estimator == "k2":
        return -d
    if estimator == "k3":
        return 1.0 - math.exp(d)
    raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")


def kl_reward_advantages(token_advantages: Sequence[float], sampler_logprobs: Sequence[float],
                         ref_logprobs: Sequence[float], kl_coef: float, estimator: str = "k1") -> list[float]:
    """``kl_in=reward``: ``a_t - kl_coef * k(logp_sampler_t, logp_ref_t)`` per sampled token."""
    if not len(token_advantages) == len(sampler_logprobs) == len(ref_logprobs):
        raise ValueError("length mismatch between advantages, sampler and reference logprobs")
    return [float(a) - kl_coef * kl_value(s, r, estimator)
            for a, s, r in zip(token_advantages, sampler_logprobs, ref_logprobs)]


# --------------------------------------------------------------------------- overlong (DAPO)


def overlong_penalty(length: int, max_tokens: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward:

    ``0`` for ``|y| <= L_max - L_cache``; ``((L_max - L_cache) - |y|) / L_cache`` inside the
    buffer; ``-1`` past ``L_max``; all times ``factor``. ``L_max = max_tokens``,
    ``L_cache = buffer``.
    """
    if buffer <= 0 or buffer > max_tokens:
        raise ValueError(f"overlong buffer must be in 1..max_tokens={max_tokens}, got {buffer}")
    start = max_tokens - buffer
    if length <= start:
        return 0.0
    if length <= max_tokens:
        return factor * (start - length) / buffer
    return -factor


# --------------------------------------------------------------------------- the policy objective


@dataclass
class SequenceInputs:
    """One sample's sampled-token lists (equal lengths) for :func:`policy_objective`."""

    logprobs: Sequence[float]  # the policy's at the current weights (a forward)
    sampler_logprobs: Sequence[float]
    advantages: Sequence[float]  # per token (KL-in-reward already folded in)
    scale: float = 1.0  # the aggregation's c_i
    ref_logprobs: Sequence[float] | None = None  # kl_in=loss


@dataclass
class ObjectiveConfig:
    loss_fn: str = "importance_sampling"  # importance_sampling | ppo | cispo
    importance_level: str = "token"  # token | sequence (GSPO)
    clip_low: float = CLIP_LOW
    clip_high: float = CLIP_HIGH
    kl_coef: float = 0.0  # > 0 with kl_in=loss: the KL term is in the loss
    kl_estimator: str = "k1"


@dataclass
class ObjectiveResult:
    loss: float  # sum_i c_i sum_t loss_it (+ kl term)
    grads: list[list[float]]  # d loss / d logprobs_it, per sequence per sampled token
    metrics: dict[str, float] = field(default_factory=dict)


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def policy_objective(seqs: Sequence[SequenceInputs], cfg: ObjectiveConfig) -> ObjectiveResult:
    """The step's loss and its gradient w.r.t. each sampled token's logprob.

    Per token, with ``r_t = exp(logp_t - logp_sampler_t)`` (token level) or GSPO's
    ``s_i = exp(mean_t(logp_t - logp_sampler_t))`` in place of ``r_t`` (sequence level,
    Zheng et al. 2025), bounds ``lo = 1 - clip_low``, ``hi = 1 + clip_high``:

    * ``importance_sampling``: ``-r A``
    * ``ppo``: ``-min(r A, clip(r, lo, hi) A)`` (a token whose clipped branch is the smaller
      one has no gradient; counted in ``clip_fraction``)
    * ``cispo`` (MiniMax-M1, Chen et al. 2025): ``-sg(clip(r, lo, hi)) A logp``: every token
      keeps a gradient, its IS weight clipped and held constant

    plus ``kl_coef * k(logp_t, logp_ref_t)`` when ``ref_logprobs`` are given (``kl_in=loss``).
    The step's loss is ``sum_i c_i sum_t loss_it``. ``dr/dlogp_t = r_t``; ``ds_i/dlogp_t =
    s_i / n_i`` for every token of sequence ``i``.
    """
    if cfg.loss_fn not in ("importance_sampling", "ppo", "cispo"):
        raise ValueError(f"loss_fn must be importance_sampling, ppo or cispo, got {cfg.loss_fn!r}")
    if cfg.importance_level not in ("token", "sequence"):
        raise ValueError(f"importance_level must be token or sequence, got {cfg.importance_level!r}")
    if cfg.importance_level == "sequence" and cfg.loss_fn == "cispo":
        raise ValueError("cispo clips each token's IS weight; importance_level=sequence is not defined for it")
    lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    total = 0.0
    grads: list[list[float]] = []
    clipped = active_tokens = 0
    ratio_sum, ratio_n, kl_sum = 0.0, 0, 0.0
    for seq in seqs:
        lp = [float(x) for x in seq.logprobs]
        slp = [float(x) for x in seq.sampler_logprobs]
        adv = [float(x) for x in seq.advantages]
        n = len(lp)
        if not n == len(slp) == len(adv):
            raise ValueError(f"length mismatch: logprobs={n}, sampler_logprobs={len(slp)}, advantages={len(adv)}")
        c = float(seq.scale)
        g = [0.0] * n
        if n == 0:
            grads.append(g)
            continue
        if cfg.importance_level == "sequence":
            s = math.exp(sum(a - b for a, b in zip(lp, slp)) / n)
            ratio_sum += s
            ratio_n += 1
            ds = 0.0  # sum_t c * dloss_t/ds
            for a in adv:
                if a != 0:
                    active_tokens += 1
                if cfg.loss_fn == "ppo":
                    unclipped, clip_obj = s * a, _clip(s, lo, hi) * a
                    if clip_obj < unclipped:
                        total += -c * clip_obj
                        clipped += a != 0
                        continue
                total += -c * s * a
                ds += -c * a
            g = [ds * s / n] * n
        else:
            for t in range(n):
                r, a = math.exp(lp[t] - slp[t]), adv[t]
                ratio_sum += r
                ratio_n += 1
                if a != 0:
                    active_tokens += 1
                if cfg.loss_fn == "importance_sampling":
                    total += -c * r * a
                    g[t] = -c * r * a
                elif cfg.loss_fn == "ppo":
                    unclipped, clip_obj = r * a, _clip(r, lo, hi) * a
                    if clip_obj < unclipped:
                        total += -c * clip_obj
                        clipped += a != 0
                    else:
                        total += -c * unclipped
                        g[t] = -c * r * a
                else:  # cispo
                    w = _clip(r, lo, hi)
                    clipped += (w != r) and a != 0
                    total += -c * w * a * lp[t]
                    g[t] = -c * w * a
        if cfg.kl_coef > 0 and seq.ref_logprobs is not None:
            ref = [float(x) for x in seq.ref_logprobs]
            if len(ref) != n:
                raise ValueError(f"length mismatch: logprobs={n}, ref_logprobs={len(ref)}")
            for t in range(n):
                k = kl_value(lp[t], ref[t], cfg.kl_estimator)
                kl_sum += k
                total += c * cfg.kl_coef * k
                g[t] += c * cfg.kl_coef * kl_grad(lp[t], ref[t], cfg.kl_estimator)
        grads.append(g)
    metrics = {
        "clip_fraction": clipped / active_tokens if active_tokens else 0.0,
        "is_ratio_mean": ratio_sum / ratio_n if ratio_n else 0.0,
    }
    if cfg.kl_coef > 0 and any(s.ref_logprobs is not None for s in seqs):
        tokens = sum(len(s.logprobs) for s in seqs if s.ref_logprobs is not None)
        metrics["kl_loss"] = kl_sum / tokens if tokens else 0.0
    return ObjectiveResult(total, grads, metrics)


# --------------------------------------------------------------------------- presets (loss=)

# ``loss=NAME`` sets these keys (docs/workflows.md). A key the run sets to something other
# than both its plain default and the preset's value is a contradiction (exit 2).
PRESETS: dict[str, dict[str, object]] = {
    # DeepSeekMath GRPO (Shao et al. 2024): std-normalised advantages, per-sequence mean of
    # the PPO-clip token losses; with kl_coef > 0 the k3 KL sits in the loss.
    "grpo": {"loss_fn": "ppo", "advantage": "group_mean_std", "aggregation": "sequence_mean"},
    # Dr. GRPO (Liu et al. 2025): neither the std nor the length normalisation.
    "dr_grpo": {"loss_fn": "ppo", "advantage": "group_mean", "aggregation": "token_sum"},
    # DAPO (Yu et al. 2025): clip-higher, dynamic sampling, token-level mean, overlong shaping.
    "dapo": {"loss_fn": "ppo", "advantage": "group_mean_std", "aggregation": "token_mean", "clip_low": 0.2,
             "clip_high": 0.28, "dynamic_sampling": True, "overlong": "soft_punish"},
    # GSPO (Zheng et al. 2025): the sequence-level ratio, clipped tightly (the paper's 3e-4 / 4e-4).
    "gspo": {"loss_fn": "ppo", "importance_level": "sequence", "advantage": "group_mean_std",
             "aggregation": "sequence_mean", "clip_low": 3e-4, "clip_high": 4e-4},
    # CISPO (MiniMax-M1, Chen et al. 2025): clipped, detached IS weights; no lower bound.
    "cispo": {"loss_fn": "cispo", "advantage": "group_mean_std", "aggregation": "token_mean", "clip_low": 1.0,
              "clip_high": 0.28},
}
PRESET_KL = {"grpo": {"kl_estimator": "k3", "kl_in": "loss"}}  # only when kl_coef > 0


def apply_preset(name: str, values: dict[str, object], defaults: dict[str, object]) -> tuple[dict[str, object], list[str]]:
    """``values`` with preset ``name`` applied to every key still at its plain default.

    Returns the new values and, for each key set to a third value, a description of the
    contradiction (the caller raises).
    """
    wanted = dict(PRESETS[name])
    try:
        kl_on = float(values.get("kl_coef", defaults.get("kl_coef", 0.0)) or 0.0) > 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        kl_on = False
    if kl_on:
        wanted.update(PRESET_KL.get(name, {}))
    out, conflicts = dict(values), []
    for key, value in wanted.items():
        current = out.get(key, defaults.get(key))
        if current == value:
            continue
        if current == defaults.get(key):
            out[key] = value
        else:
            conflicts.append(f"{key}={current!r} (loss={name} sets {key}={value!r})")
    return out, conflicts
