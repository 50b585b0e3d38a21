"""GRPO-style RL math: group advantages, RL datums, the ppo loss_fn_config, KL and metrics.

Pure Python over small lists of floats; no torch, no I/O. The losses themselves are
:mod:`kitchen.train.losses` (what backends compute); the PPO clip convention is there.

Layout of an RL datum (same as Tinker / tinker-cookbook): for a full sequence
``full = prompt + sampled`` the datum's position ``i`` reads ``full[i]`` and predicts
``full[i + 1]``. So there are ``len(prompt) - 1`` prompt positions (loss inputs zero)
followed by ``len(sampled)`` sampled positions.
"""

from __future__ import annotations

import math
from typing import Sequence

from kitchen.ports.types import Datum
from kitchen.train.losses import CLIP_HIGH, CLIP_LOW

DEFAULT_EPS = 1e-6


def _check_same_length(**lists: Sequence[object]) -> int:
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"length mismatch: {detail}")
    return next(iter(lengths.values()), 0)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _pstd(values: Sequence[float]) -> float:
    """Population standard deviation (divide by n); 0.0 for fewer than 2 values."""
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


# --------------------------------------------------------------------------- advantages


def is_degenerate_group(rewards: Sequence[float], tol: float = 1e-9) -> bool:
    """True when every reward in the group is equal (within ``tol``), i.e. no learning signal.

    An empty or single-sample group is degenerate too.
    """
    if len(rewards) < 2:
        return True
    return max(rewards) - min(rewards) <= tol


def count_degenerate_groups(groups: Sequence[Sequence[float]], tol: float = 1e-9) -> int:
    """How many groups would be skipped (all advantages zero) by ``group_advantages``."""
    return sum(1 for g in groups if is_degenerate_group(g, tol))


def group_advantages(
    rewards: Sequence[float], normalize_std: bool = False, eps: float = DEFAULT_EPS
) -> list[float]:
    """GRPO advantages for one group of samples of the same prompt.

    ``a_i = r_i - mean(r)``; with ``normalize_std`` divided by ``std(r) + eps`` where
    std is the population std (divide by n). A degenerate group (all rewards equal)
    gives all zeros, so it contributes no gradient.

    >>> group_advantages([1, 0, 0, 1])
    [0.5, -0.5, -0.5, 0.5]
    """
    rewards = [float(r) for r in rewards]
    if is_degenerate_group(rewards):
        return [0.0] * len(rewards)
    m = _mean(rewards)
    adv = [r - m for r in rewards]
    if normalize_std:
        s = _pstd(rewards) + eps
        adv = [a / s for a in adv]
    return adv


def batch_group_advantages(
    groups: Sequence[Sequence[float]], normalize_std: bool = False, eps: float = DEFAULT_EPS
) -> tuple[list[list[float]], int]:
    """``group_advantages`` over each group; also returns the number of degenerate groups."""
    return [group_advantages(g, normalize_std, eps) for g in groups], count_degenerate_groups(groups)


# --------------------------------------------------------------------------- datums


def build_rl_datum(
    prompt_tokens: Sequence[int],
    sampled_tokens: Sequence[int],
    sampled_logprobs: Sequence[float],
    advantage: float | Sequence[float],
) -> Datum:
    """An RL Datum for the ``importance_sampling`` / ``ppo`` losses (Tinker layout).

    ``model_input = (prompt + sampled)[:-1]``, ``target_tokens = (prompt + sampled)[1:]``;
    on the ``len(prompt) - 1`` prompt positions ``logprobs``, ``advantages`` and
    ``weights`` are 0; on the ``len(sampled)`` sampled positions ``logprobs`` are the
    sampler's, ``advantages`` are ``advantage`` (a float broadcast to every sampled
    token, or one value per sampled token, e.g. after a KL penalty) and ``weights`` 1.

    Raises ValueError if the prompt or the sample is empty or the lengths disagree.
    """
    prompt = [int(t) for t in prompt_tokens]
    sampled = [int(t) for t in sampled_tokens]
    if not prompt:
        raise ValueError("build_rl_datum: prompt_tokens is empty (the first sampled token needs a context)")
    if not sampled:
        raise ValueError("build_rl_datum: sampled_tokens is empty")
    n = _check_same_length(sampled_tokens=sampled, sampled_logprobs=sampled_logprobs)
    if isinstance(advantage, (int, float)):
        token_adv = [float(advantage)] * n
    else:
        token_adv = [float(a) for a in advantage]
        _check_same_length(sampled_tokens=sampled, advantages=token_adv)

    full = prompt + sampled
    p = len(prompt) - 1
    return Datum(
        model_input=full[:-1],
        loss_fn_inputs={
            "target_tokens": full[1:],
            "logprobs": [0.0] * p + [float(x) for x in sampled_logprobs],
            "advantages": [0.0] * p + token_adv,
            "weights": [0.0] * p + [1.0] * n,
        },
    )


def completion_logprobs(
    logprobs: Sequence[float | None], prompt_len: int, aligned: str = "sequence"
) -> list[float]:
    """The logprobs of the completion (sampled) tokens out of a whole-sequence list.

    ``aligned="sequence"``: one entry per token of ``prompt + completion`` (what
    ``SamplingClient.compute_logprobs`` returns, first entry None): ``logprobs[prompt_len:]``.
    ``aligned="targets"``: one entry per datum position (``forward`` results):
    ``logprobs[prompt_len - 1:]``.
    """
    if prompt_len < 1:
        raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
    if aligned == "sequence":
        start = prompt_len
    elif aligned == "targets":
        start = prompt_len - 1
    else:
        raise ValueError(f"aligned must be 'sequence' or 'targets', got {aligned!r}")
    if start > len(logprobs):
        raise ValueError(f"prompt_len={prompt_len} is longer than the {len(logprobs)} logprobs given")
    out = logprobs[start:]
    if any(x is None for x in out):
        raise ValueError("completion logprobs contain None")
    return [float(x) for x in out]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the ppo loss_fn_config


def ppo_loss_fn_config(clip_low: float = CLIP_LOW, clip_high: float = CLIP_HIGH) -> dict[str, float]:
    """Tinker's ``loss_fn_config`` for ``ppo``: the ratio bounds ``1 - clip_low``, ``1 + clip_high``.

    ``clip_low`` / ``clip_high`` are kitchen's one clip convention, epsilons around a
    ratio of 1 (default 0.2 each); the wire keys ``clip_low_threshold`` /
    ``clip_high_threshold`` are Tinker's ratio bounds themselves (default 0.8 / 1.2).
    """
    return {"clip_low_threshold": 1.0 - clip_low, "clip_high_threshold": 1.0 + clip_high}


# --------------------------------------------------------------------------- KL / entropy


def _mask_or_all(mask: Sequence[float] | None, n: int) -> list[bool]:
    if mask is None:
        return [True] * n
    if len(mask) != n:
        raise ValueError(f"length mismatch: mask={len(mask)}, values={n}")
    return [bool(m) for m in mask]


def kl_penalty_advantages(
    advantages: Sequence[float],
    sampler_logprobs: Sequence[float],
    reference_logprobs: Sequence[float],
    kl_coef: float,
    mask: Sequence[float] | None = None,
) -> list[float]:
    """Per-token advantages with a KL-to-reference penalty folded in.

    ``a_t - kl_coef * (logp_sampler_t - logp_ref_t)`` on sampled tokens. The lists are
    either aligned to the sampled tokens only (``mask=None``), or to a whole datum with
    ``mask`` (e.g. the datum's ``weights``) marking the sampled positions; masked-out
    positions keep their advantage unchanged.
    """
    n = _check_same_length(
        advantages=advantages, sampler_logprobs=sampler_logprobs, reference_logprobs=reference_logprobs
    )
    keep = _mask_or_all(mask, n)
    return [
        a - kl_coef * (s - r) if k else float(a)
        for a, s, r, k in zip(advantages, sampler_logprobs, reference_logprobs, keep)
    ]


def approx_kl(
    sampler_logprobs: Sequence[float], reference_logprobs: Sequence[float], mask: Sequence[float] | None = None
) -> float:
    """Sample estimate of KL(sampler || reference): ``mean(logp - logp_ref)`` over sampled tokens.

    Unbiased for the sequence-level KL when the tokens were drawn from the sampler; a
    single batch's value can be negative. 0.0 when there are no tokens.
    """
    n = _check_same_length(sampler_logprobs=sampler_logprobs, reference_logprobs=reference_logprobs)
    keep = _mask_or_all(mask, n)
    diffs = [s - r for s, r, k in zip(sampler_logprobs, reference_logprobs, keep) if k]
    return _mean(diffs)


def entropy_estimate(logprobs: Sequence[float], mask: Sequence[float] | None = None) -> float:
    """Sample estimate of the per-token entropy: ``-mean(logprobs)`` of the *sampled* tokens.

    This is the Monte-Carlo estimate from the tokens actually drawn (their own logprobs),
    not the exact entropy of the full next-token distribution. 0.0 when there are none.
    """
    keep = _mask_or_all(mask, len(logprobs))
    return -_mean([lp for lp, k in zip(logprobs, keep) if k])


# --------------------------------------------------------------------------- metrics


def _flatten(values: Sequence[object]) -> list:
    out: list = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(v)
        else:
            out.append(v)
    return out


def rl_step_metrics(
    rewards: Sequence[Sequence[float]],
    correct: Sequence[Sequence[bool]] | None = None,
    sampled_token_counts: Sequence[int] | Sequence[Sequence[int]] | None = None,
    sampler_logprobs: Sequence[Sequence[float]] | None = None,
    reference_logprobs: Sequence[Sequence[float]] | None = None,
) -> dict[str, float]:
    """Metrics for one RL step.

    ``rewards`` (and ``correct``) are grouped: one inner list per prompt, one entry per
    sample. ``sampled_token_counts`` may be flat or grouped (one count per sample).
    ``sampler_logprobs`` / ``reference_logprobs``: optional, one list of sampled-token
    logprobs per sample (flat over samples, not grouped), for ``entropy`` and ``kl_ref``.

    Returns reward_mean, reward_std (population), accuracy (0.0 if ``correct`` is None),
    sampled_tokens (total), sampled_tokens_mean (per sample), frac_degenerate_groups,
    num_groups, num_samples, and entropy / kl_ref when logprobs are given.
    """
    flat_rewards = [float(r) for g in rewards for r in g]
    n = len(flat_rewards)
    out: dict[str, float] = {
        "reward_mean": _mean(flat_rewards),
        "reward_std": _pstd(flat_rewards),
        "num_groups": float(len(rewards)),
        "num_samples": float(n),
        "frac_degenerate_groups": count_degenerate_groups(rewards) / len(rewards) if rewards else 0.0,
    }
    if correct is not None:
        flat_correct = [bool(c) for g in correct for c in g]
        if len(flat_correct) != n:
            raise ValueError(f"length mismatch: rewards={n}, correct={len(flat_correct)}")
        out["accuracy"] = _mean([1.0 if c else 0.0 for c in flat_correct])
    else:
        out["accuracy"] = 0.0
    if sampled_token_counts is not None:
        counts = [int(c) for c in _flatten(sampled_token_counts)]
        out["sampled_tokens"] = float(sum(counts))
        out["sampled_tokens_mean"] = _mean(counts)
    if sampler_logprobs is not None:
        flat_lp = [float(x) for seq in sampler_logprobs for x in seq]
        out["entropy"] = entropy_estimate(flat_lp)
        if reference_logprobs is not None:
            flat_ref = [float(x) for seq in reference_logprobs for x in seq]
            out["kl_ref"] = approx_kl(flat_lp, flat_ref)
    return out
