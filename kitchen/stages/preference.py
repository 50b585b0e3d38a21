"""Preference stages: the DPO family against a frozen reference, and reference-free SimPO / ORPO.

The reference model is the *frozen starting point*: ``sampling_client(base_model=spec.model)``,
the untouched base model. It is never the session's weights, so on ``resume=true`` the
reference is still the original start and not the checkpoint being resumed (a mistake
that would silently reset the DPO rewards to zero at every resume). Reference logprobs
are computed once per example, lazily, and cached for the run.

One step::

    ReferenceLogprobs   summed completion logprobs of the batch's pairs under the reference (cached);
                        only for loss=dpo (``needs_reference``): simpo and orpo never build the
                        reference sampler, one forward less per step
    PolicyLogprobs      a fresh ``forward`` at the current weights
    DPOStep             the loss's metrics + per-sequence cross_entropy weights ``-dL/dlogp`` whose
                        gradient is exactly the loss's (kitchen.train.preference_losses); the logged
                        loss is the preference loss (the surrogate's own value is meaningless)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from kitchen.engine.context import Context
from kitchen.engine.pipeline import StepOutput
from kitchen.engine.stage import Stage
from kitchen.evaluators import EvalEnv, EvalResult
from kitchen.ports.types import Datum
from kitchen.stages.data import ChatData, check_tokens_before_run, tokenize_splits
from kitchen.stages.rollouts import full_sequence
from kitchen.telemetry import events as ev

if TYPE_CHECKING:  # typed keys of the workflow's config (dpo_beta...), no import at run time
    from kitchen.workflows.preference import PreferenceConfig

# The cross_entropy surrogate's own numbers (its "loss" divides by a weight sum of ~0).
SURROGATE_METRICS = ("loss:sum", "loss:mean", "num_tokens")


@dataclass
class PreferenceState:
    reference: Any = None  # sampler over the frozen base model
    ref_cache: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    ref_sums: list[tuple[float, float]] = field(default_factory=list)  # this batch, under the reference
    policy_sums: list[tuple[float, float]] = field(default_factory=list)  # this batch, at the current weights


def completion_sum(logprobs: Sequence[float | None], weights: Sequence[float]) -> float:
    """Sum of target-aligned logprobs over the completion (weight > 0) positions."""
    return float(sum(lp for lp, w in zip(logprobs, weights) if w and lp is not None))


def completion_length(datum: Datum) -> int:
    """Completion tokens of a datum (its weight > 0 positions): the ``|y|`` of length-normalised losses."""
    return sum(1 for w in datum.loss_fn_inputs["weights"] if w)


def needs_reference(ctx: Context[PreferenceConfig]) -> bool:
    """Only loss=dpo compares with the frozen reference; simpo and orpo skip its forward entirely."""
    return ctx.spec.loss == "dpo"


needs_reference.label = "loss=dpo (simpo, orpo: reference-free)"  # type: ignore[attr-defined]


def preference_result(spec: PreferenceConfig, pairs: Sequence[tuple[Datum, Datum]], pol: Sequence[tuple[float, float]],
                      ref: Sequence[tuple[float, float]] | None) -> Any:
    """The configured loss on a batch: a :class:`kitchen.train.preference_losses.PreferenceResult`."""
    from kitchen.train.preference_losses import dpo_family, orpo, simpo

    pc, pr = [p[0] for p in pol], [p[1] for p in pol]
    lc = [completion_length(c) for c, _ in pairs]
    lr = [completion_length(r) for _, r in pairs]
    if spec.loss == "simpo":
        return simpo(pc, pr, lc, lr, spec.dpo_beta, spec.simpo_gamma)
    if spec.loss == "orpo":
        return orpo(pc, pr, lc, lr, spec.orpo_lambda)
    assert ref is not None
    return dpo_family(pc, pr, [r[0] for r in ref], [r[1] for r in ref], spec.dpo_beta, spec.dpo_loss,
                      spec.label_smoothing, lc, lr)


def metric_prefix(spec: PreferenceConfig) -> str:
    """``dpo`` for every dpo_loss variant (as DPO always logged), else the loss's name."""
    return "dpo" if spec.loss == "dpo" else spec.loss


def reweight(datum: Datum, weight: float) -> Datum:
    """The same datum with ``weight`` on every completion token (0 on the prompt)."""
    inputs = dict(datum.loss_fn_inputs)
    inputs["weights"] = [weight if w else 0.0 for w in datum.loss_fn_inputs["weights"]]
    return Datum(datum.model_input, inputs)


def reference_sums(ctx: Context[PreferenceConfig], split: str, indices: Sequence[int], pairs: Sequence[tuple[Datum, Datum]]) -> list[tuple[float, float]]:
    """``(ref_chosen, ref_rejected)`` summed completion logprobs per pair, computed once per example."""
    state = ctx.use(PreferenceState)
    cache = state.ref_cache
    todo = [(i, p) for i, p in zip(indices, pairs) if (split, i) not in cache]
    if todo:
        if state.reference is None:
            state.reference = ctx.training.sampling_client(base_model=ctx.spec.model)
        ref = state.reference
        futures = [(i, p, ref.compute_logprobs(full_sequence(p[0])), ref.compute_logprobs(full_sequence(p[1]))) for i, p in todo]
        for i, (chosen, rejected), fc, fr in futures:
            cache[(split, i)] = (
                completion_sum(fc.result()[1:], chosen.loss_fn_inputs["weights"]),
                completion_sum(fr.result()[1:], rejected.loss_fn_inputs["weights"]),
            )
    return [cache[(split, i)] for i in indices]


def policy_sums(training: Any, pairs: Sequence[tuple[Datum, Datum]], batch_size: int) -> list[tuple[float, float]]:
    """``(policy_chosen, policy_rejected)`` summed completion logprobs at the current weights."""
    flat = [d for pair in pairs for d in pair]
    chunks = [flat[i : i + 2 * batch_size] for i in range(0, len(flat), 2 * batch_size)]
    futures = [training.forward(chunk) for chunk in chunks]
    sums: list[float] = []
    for chunk, future in zip(chunks, futures):
        result = future.result()
        sums.extend(completion_sum(lp, d.loss_fn_inputs["weights"]) for lp, d in zip(result.logprobs, chunk))
    return [(sums[2 * k], sums[2 * k + 1]) for k in range(len(pairs))]


class TokenizePreferences(Stage):
    """Render preference rows into (chosen, rejected) datum pairs once; the token cache makes a second run free."""

    def validate(self, ctx: Context[PreferenceConfig]) -> None:
        from kitchen.data.token_cache import cached_preference_data

        check_tokens_before_run(ctx, cached_preference_data, "preference pairs")

    def execute(self, ctx: Context[PreferenceConfig]) -> None:
        from kitchen.data.token_cache import cached_preference_data

        tokenize_splits(ctx, cached_preference_data, "preference pairs")
        spec = ctx.spec
        if spec.loss == "dpo":
            what = f"DPO ({spec.dpo_loss}): beta {spec.dpo_beta}, reference = the frozen base model {spec.model}"
        elif spec.loss == "simpo":
            what = f"SimPO: beta {spec.dpo_beta}, gamma {spec.simpo_gamma}, no reference model"
        else:
            what = f"ORPO: lambda {spec.orpo_lambda}, no reference model"
        ctx.emit(ev.RUN_INFO, message=what)


class ReferenceLogprobs(Stage):
    """The batch's summed completion logprobs under the frozen base model (cached per example)."""

    def execute(self, ctx: Context[PreferenceConfig]) -> None:
        data = ctx.use(ChatData)
        ctx.use(PreferenceState).ref_sums = reference_sums(ctx, "train", data.batch.indices, data.batch_items())


class PolicyLogprobs(Stage):
    """A fresh ``forward`` at the current weights: the batch's summed completion logprobs."""

    def execute(self, ctx: Context[PreferenceConfig]) -> None:
        ctx.pipeline.drain()  # the weights must include every finished step
        ctx.use(PreferenceState).policy_sums = policy_sums(ctx.training, ctx.use(ChatData).batch_items(), ctx.spec.batch_size)


class DPOStep(Stage):
    """The preference loss and its metrics, and the cross_entropy weights that carry its gradient."""

    def execute(self, ctx: Context[PreferenceConfig]) -> StepOutput:
        spec, state = ctx.spec, ctx.use(PreferenceState)
        pairs = ctx.use(ChatData).batch_items()
        pol = state.policy_sums
        reference = needs_reference(ctx)
        result = preference_result(spec, pairs, pol, state.ref_sums if reference else None)
        w_chosen, w_rejected = result.weights()
        datums = []
        for (chosen, rejected), wc, wr in zip(pairs, w_chosen, w_rejected):
            datums.extend((reweight(chosen, wc), reweight(rejected, wr)))
        n, name = len(pol), metric_prefix(spec)
        metrics = {
            f"{name}_loss": result.loss,
            f"{name}_accuracy": result.accuracy,
            f"{name}_margin": result.margin,
            "chosen_reward": result.chosen_reward,
            "rejected_reward": result.rejected_reward,
            "policy_logp_chosen": sum(p[0] for p in pol) / n,
            **({"ref_logp_chosen": sum(r[0] for r in state.ref_sums) / n} if reference else {}),
            **result.extra,
            "pairs": float(n),
        }
        return StepOutput(datums, "cross_entropy", None, metrics, loss=result.loss, drop_metrics=SURROGATE_METRICS)


class HeldOutDPO:
    """Held-out loss, accuracy and margin of the configured preference loss (against the frozen reference for dpo)."""

    def __init__(self, ctx: Context[PreferenceConfig]) -> None:
        self.ctx = ctx

    def __call__(self, env: EvalEnv) -> EvalResult:
        pairs = self.ctx.use(ChatData).test[: env.spec.eval_max_examples]
        if not env.want_metrics or not pairs:
            return EvalResult()
        ref = reference_sums(self.ctx, "test", list(range(len(pairs))), pairs) if needs_reference(self.ctx) else None
        pol = policy_sums(env.training, pairs, env.spec.batch_size)
        result = preference_result(env.spec, pairs, pol, ref)
        name = metric_prefix(env.spec)
        return EvalResult({f"eval_{name}_loss": result.loss, f"eval_{name}_accuracy": result.accuracy,
                           f"eval_{name}_margin": result.margin})


def preference_evaluators(ctx: Context[PreferenceConfig]) -> list[Any]:
    """Held-out DPO metrics (when there is a test set) and greedy previews of the first prompts."""
    from kitchen.evaluators import GreedyPreview

    data = ctx.use(ChatData)
    rows = (data.test_rows or data.train_rows)[: ctx.spec.num_preview_samples]
    prompts = [r["prompt"] if isinstance(r.get("prompt"), str) else list(r["prompt"]) for r in rows]
    return ([HeldOutDPO(ctx)] if data.test else []) + [GreedyPreview(prompts)]
