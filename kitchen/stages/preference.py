"""Preference (DPO) stages.

The reference model is the *frozen starting point*: ``sampling_client(base_model=spec.model)``,
the untouched base model. It is never the session's weights, so on ``resume=true`` the
reference is still the original start and not the checkpoint being resumed (a mistake
that would silently reset the DPO rewards to zero at every resume). Reference logprobs
are computed once per example, lazily, and cached in the context.

One DPO step::

    render_batch        this step's pairs (the supervised batch plan)
    reference_logprobs  summed completion logprobs under the reference (cached)
    policy_logprobs     a fresh ``forward`` at the current weights
    dpo_weights         dpo_loss metrics + per-sequence cross_entropy weights whose gradient
                        is exactly the DPO gradient (kitchen.train.dpo.dpo_token_weights)
    train_batch         forward_backward(cross_entropy) with those weights; the logged loss
                        is dpo_loss (the surrogate's own value is meaningless)
"""

from __future__ import annotations

import time
from typing import Sequence

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.errors import ConfigError
from kitchen.ports.types import Datum
from kitchen.stages.data import tokenize_splits
from kitchen.stages.rl import full_sequence, greedy_previews
from kitchen.stages.train import drain, outside_training
from kitchen.telemetry import events as ev

# The cross_entropy surrogate's own numbers (its "loss" divides by a weight sum of ~0).
SURROGATE_METRICS = ("loss:sum", "loss:mean", "num_tokens")


def completion_sum(logprobs: Sequence[float | None], weights: Sequence[float]) -> float:
    """Sum of target-aligned logprobs over the completion (weight > 0) positions."""
    return float(sum(lp for lp, w in zip(logprobs, weights) if w and lp is not None))


def reweight(datum: Datum, weight: float) -> Datum:
    """The same datum with ``weight`` on every completion token (0 on the prompt)."""
    inputs = dict(datum.loss_fn_inputs)
    inputs["weights"] = [weight if w else 0.0 for w in datum.loss_fn_inputs["weights"]]
    return Datum(datum.model_input, inputs)


def reference(ctx: Context):
    ref = ctx.state.get("reference")
    if ref is None:
        ref = ctx.state["reference"] = ctx.training.sampling_client(base_model=ctx.spec.model)
    return ref


def reference_sums(ctx: Context, split: str, indices: Sequence[int], pairs: Sequence[tuple[Datum, Datum]]) -> list[tuple[float, float]]:
    """``(ref_chosen, ref_rejected)`` summed completion logprobs per pair, computed once per example."""
    cache: dict = ctx.state.setdefault("ref_cache", {})
    todo = [(i, p) for i, p in zip(indices, pairs) if (split, i) not in cache]
    if todo:
        ref = reference(ctx)
        futures = [(i, p, ref.compute_logprobs(full_sequence(p[0])), ref.compute_logprobs(full_sequence(p[1]))) for i, p in todo]
        for i, (chosen, rejected), fc, fr in futures:
            cache[(split, i)] = (
                completion_sum(fc.result()[1:], chosen.loss_fn_inputs["weights"]),
                completion_sum(fr.result()[1:], rejected.loss_fn_inputs["weights"]),
            )
    return [cache[(split, i)] for i in indices]


def policy_sums(ctx: Context, pairs: Sequence[tuple[Datum, Datum]], batch_size: int) -> list[tuple[float, float]]:
    """``(policy_chosen, policy_rejected)`` summed completion logprobs at the current weights."""
    flat = [d for pair in pairs for d in pair]
    chunks = [flat[i : i + 2 * batch_size] for i in range(0, len(flat), 2 * batch_size)]
    futures = [ctx.training.forward(chunk) for chunk in chunks]
    sums: list[float] = []
    for chunk, future in zip(chunks, futures):
        result = future.result()
        sums.extend(completion_sum(lp, d.loss_fn_inputs["weights"]) for lp, d in zip(result.logprobs, chunk))
    return [(sums[2 * k], sums[2 * k + 1]) for k in range(len(pairs))]


@register_stage("tokenize_preferences")
class TokenizePreferences(Stage):
    """Render preference rows into (chosen, rejected) datum pairs once; the token cache makes a second run free."""

    def validate(self, ctx: Context) -> None:
        if not ctx.spec.dataset:
            raise ConfigError(f"Recipe '{ctx.spec.recipe}' needs a preference dataset: pass dataset=PATH (rows with prompt, chosen, rejected).")

    def execute(self, ctx: Context) -> None:
        from kitchen.train.token_cache import cached_preference_data

        tokenize_splits(ctx, cached_preference_data, "preference pairs")
        spec = ctx.spec
        test_rows = ctx.state.get("test_rows") or ctx.state.get("train_rows") or []
        ctx.state["preview_prompts"] = [
            [{"role": "user", "content": r["prompt"]}] if isinstance(r.get("prompt"), str) else list(r["prompt"])
            for r in test_rows[: spec.num_preview_samples]
        ]


@register_stage("reference_logprobs")
class ReferenceLogprobs(Stage):
    """The batch's summed completion logprobs under the frozen base model (cached per example)."""

    def execute(self, ctx: Context) -> None:
        indices = ctx.state["batch"].indices
        ctx.state["ref_sums"] = reference_sums(ctx, "train", indices, ctx.state["batch_data"])


@register_stage("policy_logprobs")
class PolicyLogprobs(Stage):
    """A fresh ``forward`` at the current weights: the batch's summed completion logprobs."""

    def execute(self, ctx: Context) -> None:
        drain(ctx)  # the weights must include every finished step
        ctx.state["policy_sums"] = policy_sums(ctx, ctx.state["batch_data"], ctx.spec.batch_size)


@register_stage("dpo_weights")
class DPOWeights(Stage):
    """dpo_loss and its metrics, and the cross_entropy weights that carry the DPO gradient."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.dpo import dpo_loss, dpo_token_weights

        beta = ctx.spec.dpo_beta
        pol, ref = ctx.state["policy_sums"], ctx.state["ref_sums"]
        pc, pr = [p[0] for p in pol], [p[1] for p in pol]
        rc, rr = [r[0] for r in ref], [r[1] for r in ref]
        result = dpo_loss(pc, pr, rc, rr, beta)
        weights = dpo_token_weights(pc, pr, rc, rr, beta)
        datums = []
        for (chosen, rejected), wc, wr in zip(ctx.state["batch_data"], weights.chosen, weights.rejected):
            datums.extend((reweight(chosen, wc), reweight(rejected, wr)))
        n = len(pc)
        ctx.state["train_datums"] = datums
        ctx.state["step_loss"] = result.loss
        ctx.state["step_metrics"] = {
            "dpo_loss": result.loss,
            "dpo_accuracy": result.accuracy,
            "dpo_margin": result.margin,
            "chosen_reward": result.chosen_reward,
            "rejected_reward": result.rejected_reward,
            "policy_logp_chosen": sum(pc) / n,
            "ref_logp_chosen": sum(rc) / n,
            "pairs": float(n),
        }


@register_stage("dpo_setup")
class DPOSetup(Stage):
    """DPO trains with cross_entropy on reweighted tokens; the logged loss is dpo_loss."""

    def execute(self, ctx: Context) -> None:
        ctx.state["loss_fn"] = "cross_entropy"
        ctx.state["loss_fn_config"] = None
        ctx.state["drop_metrics"] = SURROGATE_METRICS
        ctx.emit(ev.RUN_INFO, message=f"DPO: beta {ctx.spec.dpo_beta}, reference = the frozen base model {ctx.spec.model}")


@register_stage("dpo_evaluate")
class DPOEvaluate(Stage):
    """Held-out DPO loss / accuracy / margin (eval.result); tag= also previews a few greedy replies."""

    @outside_training
    def execute(self, ctx: Context) -> None:
        pairs = (ctx.state.get("test_data") or [])[: ctx.spec.eval_max_examples]
        drain(ctx)
        if pairs and ctx.state.get("last_eval_step") != ctx.step:
            from kitchen.train.dpo import dpo_loss

            ctx.emit(ev.EVAL_START, step=ctx.step, split="test")
            t0 = time.perf_counter()
            ref = reference_sums(ctx, "test", list(range(len(pairs))), pairs)
            pol = policy_sums(ctx, pairs, ctx.spec.batch_size)
            result = dpo_loss([p[0] for p in pol], [p[1] for p in pol], [r[0] for r in ref], [r[1] for r in ref], ctx.spec.dpo_beta)
            metrics = {"eval_dpo_loss": result.loss, "eval_dpo_accuracy": result.accuracy, "eval_dpo_margin": result.margin}
            ctx.state["last_eval_step"] = ctx.step
            ctx.state.setdefault("eval_history", []).append((ctx.step, metrics))
            ctx.metrics.update(metrics)
            ctx.emit(ev.EVAL_RESULT, step=ctx.step, split="test", metrics=metrics)
            ctx.emit(ev.EVAL_STOP, step=ctx.step, duration_s=time.perf_counter() - t0)
        tag = self.options.get("tag")
        prompts = ctx.state.get("preview_prompts") or []
        if tag and prompts:
            greedy_previews(ctx, ctx.training.sampling_client(), prompts, tag)
