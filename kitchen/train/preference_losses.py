"""The preference family's losses, each with its exact per-sequence gradient (pure math, no I/O).

Every loss here depends on the policy only through per-sequence *summed* completion
logprobs ``pc_i`` (chosen) and ``pr_i`` (rejected), so it trains through the same
weighted cross_entropy surrogate as DPO (see :mod:`kitchen.train.dpo`): put the weight
``w = -dL/dp`` on every completion token of the sequence. Length-normalised losses
(IPO, SimPO, ORPO) are differentiated w.r.t. the *summed* logprob too, so their
``1/|y|`` is already inside ``dL/dp`` (the per-token weight is the per-sequence
derivative of the mean-logprob loss divided by the length). ``L`` is the mean over the
``N`` pairs of the batch.

Notation: ``h_i = (pc_i - rc_i) - (pr_i - rr_i)`` (reference-based), ``|c|, |r|`` the
completion token counts, ``σ`` the logistic function, ``ε = label_smoothing``.

=========== =================================================== ======================= =====================
loss        per pair                                            paper                   peer flag
=========== =================================================== ======================= =====================
sigmoid     ``(1-ε)(-logσ(βh)) + ε(-logσ(-βh))`` (ε=0: DPO)     Rafailov et al. 2023;    TRL DPOConfig
                                                                cDPO (Mitchell 2023)     loss_type="sigmoid",
                                                                                         label_smoothing
ipo         ``(h' - 1/(2β))²``, h' from *mean* token logprobs   Azar et al. 2023         loss_type="ipo"
hinge       ``max(0, 1 - βh)``                                  SLiC, Zhao et al. 2023   loss_type="hinge"
robust      ``((1-ε)(-logσ(βh)) - ε(-logσ(-βh))) / (1-2ε)``     Chowdhury et al. 2024    loss_type="robust"
simpo       ``-logσ(β(pc/|c| - pr/|r|) - γ)``, no reference     Meng et al. 2024         CPOConfig
                                                                                         loss_type="simpo",
                                                                                         simpo_gamma
orpo        see :func:`orpo`, no reference                      Hong et al. 2024         ORPOTrainer (its
                                                                                         ``beta`` is λ)
=========== =================================================== ======================= =====================

IPO follows TRL's convention, not the paper's literal sums: ``h'`` uses each sequence's
logprob divided by its completion length (policy and reference alike), which keeps
``1/(2β)`` on the same scale whatever the lengths. Hinge and robust use summed logprobs,
as TRL does. At hinge's kink (``βh = 1``) the gradient taken is 0, as torch's relu.

The KTO loss (unpaired data) lives in :mod:`kitchen.train.kto`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

from kitchen.train.dpo import log_sigmoid, sigmoid

DPO_LOSSES: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "robust")  # the dpo_loss= choices (loss=dpo)
REFERENCE_FREE: tuple[str, ...] = ("simpo", "orpo")  # loss= choices that need no reference model


class PreferenceResult(NamedTuple):
    """A batch's loss, its metrics, and ``dL/dp`` per chosen / rejected sequence (summed logprob)."""

    loss: float
    accuracy: float  # fraction of pairs whose chosen reward beats the rejected one (ties are wrong)
    margin: float  # mean(chosen_reward - rejected_reward)
    chosen_reward: float
    rejected_reward: float
    grad_chosen: list[float]  # dL/dpc_i
    grad_rejected: list[float]  # dL/dpr_i
    extra: dict[str, float] = {}

    def weights(self, scale: float = 1.0) -> tuple[list[float], list[float]]:
        """Cross_entropy weights ``w = -scale * dL/dp`` per sequence (the surrogate's gradient is ``∇L``)."""
        return [-scale * g for g in self.grad_chosen], [-scale * g for g in self.grad_rejected]


def _check(n_values: Sequence[int], beta: float) -> int:
    if len(set(n_values)) != 1:
        raise ValueError(f"length mismatch between the per-sequence inputs: {list(n_values)}")
    if n_values[0] == 0:
        raise ValueError("a preference loss needs at least one pair")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    return n_values[0]


def _lengths(lengths: Sequence[float], what: str) -> list[float]:
    out = [float(x) for x in lengths]
    if any(x <= 0 for x in out):
        raise ValueError(f"{what}: every completion needs at least one token, got {out}")
    return out


def _summary(loss_terms: Sequence[float], chosen: Sequence[float], rejected: Sequence[float],
             gc: list[float], gr: list[float], extra: Optional[dict[str, float]] = None) -> PreferenceResult:
    n = len(loss_terms)
    diffs = [c - r for c, r in zip(chosen, rejected)]
    return PreferenceResult(
        loss=sum(loss_terms) / n, accuracy=sum(1 for d in diffs if d > 0) / n, margin=sum(diffs) / n,
        chosen_reward=sum(chosen) / n, rejected_reward=sum(rejected) / n, grad_chosen=gc, grad_rejected=gr,
        extra=extra or {})


def dpo_family(policy_chosen: Sequence[float], policy_rejected: Sequence[float], ref_chosen: Sequence[float],
               ref_rejected: Sequence[float], beta: float, variant: str = "sigmoid", label_smoothing: float = 0.0,
               chosen_lengths: Optional[Sequence[float]] = None,
               rejected_lengths: Optional[Sequence[float]] = None) -> PreferenceResult:
    """The reference-based losses (``dpo_loss=``): sigmoid (DPO / cDPO), ipo, hinge, robust.

    Rewards in the metrics are ``β (p - ref)`` of summed logprobs for every variant, as
    DPO reports them. ``ipo`` needs the completion lengths. With ``variant="sigmoid"``
    and ``label_smoothing=0`` the loss and weights are DPO's as
    :func:`kitchen.train.dpo.dpo_loss` / ``dpo_token_weights`` compute them, bit for bit.
    """
    pc, pr, rc, rr = (list(map(float, x)) for x in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    n = _check([len(pc), len(pr), len(rc), len(rr)], beta)
    if variant not in DPO_LOSSES:
        raise ValueError(f"dpo_loss must be one of {', '.join(DPO_LOSSES)}, got {variant!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {eps}")
    if eps and variant not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing applies to dpo_loss=sigmoid or robust, not {variant}")
    chosen_rewards = [beta * (a - b) for a, b in zip(pc, rc)]
    rejected_rewards = [beta * (a - b) for a, b in zip(pr, rr)]
    terms: list[float] = []
    gc: list[float] = []
    gr: list[float] = []
    if variant == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("dpo_loss=ipo needs the completion lengths (chosen_lengths, rejected_lengths)")
        lc, lr = _lengths(chosen_lengths, "chosen_lengths"), _lengths(rejected_lengths, "rejected_lengths")
        _check([n, len(lc), len(lr)], beta)
        target = 1.0 / (2.0 * beta)
        for i in range(n):
            h = (pc[i] - rc[i]) / lc[i] - (pr[i] - rr[i]) / lr[i]
            terms.append((h - target) ** 2)
            dh = 2.0 * (h - target) / n
            gc.append(dh / lc[i])
            gr.append(-dh / lr[i])
        return _summary(terms, chosen_rewards, rejected_rewards, gc, gr)
    for i in range(n):
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])
        if variant == "sigmoid" and not eps:
            # the same expressions, in the same order, as kitchen.train.dpo (bit for bit)
            terms.append(-log_sigmoid(chosen_rewards[i] - rejected_rewards[i]))
            w = beta * sigmoid(-beta * h) / n
            gc.append(-w)
            gr.append(w)
            continue
        if variant == "hinge":
            terms.append(max(0.0, 1.0 - beta * h))
            dh = -beta if 1.0 - beta * h > 0 else 0.0
        elif variant == "sigmoid":  # cDPO: the label is flipped with probability eps
            terms.append((1 - eps) * -log_sigmoid(beta * h) + eps * -log_sigmoid(-beta * h))
            dh = -(1 - eps) * beta * sigmoid(-beta * h) + eps * beta * sigmoid(beta * h)
        else:  # robust: unbiased under label noise eps
            terms.append(((1 - eps) * -log_sigmoid(beta * h) - eps * -log_sigmoid(-beta * h)) / (1 - 2 * eps))
            dh = (-(1 - eps) * beta * sigmoid(-beta * h) - eps * beta * sigmoid(beta * h)) / (1 - 2 * eps)
        gc.append(dh / n)
        gr.append(-dh / n)
    return _summary(terms, chosen_rewards, rejected_rewards, gc, gr)


def simpo(policy_chosen: Sequence[float], policy_rejected: Sequence[float], chosen_lengths: Sequence[float],
          rejected_lengths: Sequence[float], beta: float, gamma: float) -> PreferenceResult:
    """SimPO (Meng et al. 2024): ``-logσ(β (pc/|c| - pr/|r|) - γ)``, no reference model.

    With ``x = β (pc/|c| - pr/|r|) - γ``: ``dL/dpc = -β σ(-x) / (N |c|)``,
    ``dL/dpr = +β σ(-x) / (N |r|)``. Rewards are ``β * mean token logprob`` (TRL's CPO
    with ``loss_type="simpo"`` reports the same); accuracy compares them without γ.
    """
    pc, pr = list(map(float, policy_chosen)), list(map(float, policy_rejected))
    lc, lr = _lengths(chosen_lengths, "chosen_lengths"), _lengths(rejected_lengths, "rejected_lengths")
    n = _check([len(pc), len(pr), len(lc), len(lr)], beta)
    chosen = [beta * p / k for p, k in zip(pc, lc)]
    rejected = [beta * p / k for p, k in zip(pr, lr)]
    terms, gc, gr = [], [], []
    for i in range(n):
        x = chosen[i] - rejected[i] - gamma
        terms.append(-log_sigmoid(x))
        s = beta * sigmoid(-x) / n
        gc.append(-s / lc[i])
        gr.append(s / lr[i])
    return _summary(terms, chosen, rejected, gc, gr)


def log_odds(mean_logprob: float) -> float:
    """``log(p / (1 - p))`` with ``p = exp(mean_logprob)``; the mean is clamped just below 0 (p < 1)."""
    m = min(float(mean_logprob), -1e-9)
    return m - math.log(-math.expm1(m))


def orpo(policy_chosen: Sequence[float], policy_rejected: Sequence[float], chosen_lengths: Sequence[float],
         rejected_lengths: Sequence[float], lam: float) -> PreferenceResult:
    """ORPO (Hong et al. 2024): ``NLL(chosen) + λ mean_i(-logσ(lo(c_i) - lo(r_i)))``, no reference.

    ``lo(y) = log(p / (1 - p))``, ``p = exp(m)``, ``m = p_y / |y|`` (mean token logprob),
    so ``dlo/dm = 1 / (1 - exp(m))``. The NLL is the token mean over the batch's chosen
    completions, ``-Σ pc_i / Σ|c_i|``, as TRL's ORPOTrainer computes it. With
    ``x_i = lo(c_i) - lo(r_i)``::

        dL/dpc_i = -1/Σ|c| - λ σ(-x_i) / (N |c_i| (1 - exp(m_c,i)))
        dL/dpr_i = +λ σ(-x_i) / (N |r_i| (1 - exp(m_r,i)))

    Rewards are ``λ * lo(y)``; extra metrics ``nll_loss`` and ``log_odds_ratio`` (mean x).
    """
    pc, pr = list(map(float, policy_chosen)), list(map(float, policy_rejected))
    lc, lr = _lengths(chosen_lengths, "chosen_lengths"), _lengths(rejected_lengths, "rejected_lengths")
    n = _check([len(pc), len(pr), len(lc), len(lr)], lam)
    total = sum(lc)
    nll = -sum(pc) / total
    mc = [min(p / k, -1e-9) for p, k in zip(pc, lc)]
    mr = [min(p / k, -1e-9) for p, k in zip(pr, lr)]
    xs = [log_odds(a) - log_odds(b) for a, b in zip(mc, mr)]
    terms, gc, gr = [], [], []
    for i in range(n):
        terms.append(nll + lam * -log_sigmoid(xs[i]))
        s = lam * sigmoid(-xs[i]) / n
        gc.append(-1.0 / total - s / (lc[i] * -math.expm1(mc[i])))
        gr.append(s / (lr[i] * -math.expm1(mr[i])))
    chosen = [lam * log_odds(m) for m in mc]
    rejected = [lam * log_odds(m) for m in mr]
    return _summary(terms, chosen, rejected, gc, gr, {"nll_loss": nll, "log_odds_ratio": sum(xs) / n})


__all__ = ["DPO_LOSSES", "REFERENCE_FREE", "PreferenceResult", "dpo_family", "log_odds", "orpo", "simpo"]
