"""KTO stages: unpaired completions labelled desirable / undesirable, against the frozen starting model.

The data are TRL's unpaired preference rows, normalised to weighted messages + ``label``
(:func:`kitchen.train.formats.normalize_unpaired`). They are tokenized as two groups
(desirable, undesirable) through the SFT token cache, so each datum's label is known
without a second index. The reference is the frozen base model, as in the preference
workflow (also after resume), and its logprobs of each example are cached for the run.

One step::

    KTOLogprobs   one policy forward over the batch *and* its mismatched pairs (prompt of i,
                  completion of i+1: the KL estimate z0), their reference logprobs
    KTOStep       kto_loss + per-sequence cross_entropy weights -dL/dlogp (kitchen.train.kto)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from kitchen.config.spec import train_on_what_of
from kitchen.data.checks import check_rows
from kitchen.engine.context import Context
from kitchen.engine.pipeline import StepOutput
from kitchen.engine.stage import Stage
from kitchen.evaluators import EvalEnv, EvalResult
from kitchen.ports.types import Datum
from kitchen.stages.data import ChatData, LoadDataset
from kitchen.stages.preference import SURROGATE_METRICS, completion_sum, reweight
from kitchen.stages.rollouts import full_sequence
from kitchen.telemetry import events as ev

if TYPE_CHECKING:
    from kitchen.workflows.kto import KTOConfig


@dataclass
class KTOState:
    reference: Any = None  # sampler over the frozen base model
    labels: dict[str, list[bool]] = field(default_factory=dict)  # split -> label per datum of ChatData.<split>
    ref_cache: dict[tuple[str, int], float] = field(default_factory=dict)
    policy: list[float] = field(default_factory=list)  # this batch, at the current weights
    ref: list[float] = field(default_factory=list)
    kl_policy: list[float] = field(default_factory=list)  # the mismatched pairs
    kl_ref: list[float] = field(default_factory=list)


def split_datum(datum: Datum) -> tuple[list[int], list[int]]:
    """(prompt tokens, completion tokens) of a datum: the completion is its weight > 0 targets."""
    full = full_sequence(datum)
    weights = datum.loss_fn_inputs["weights"]
    first = next(t for t, w in enumerate(weights) if w)
    completion = [int(t) for t, w in zip(datum.loss_fn_inputs["target_tokens"], weights) if w]
    return [int(t) for t in full[: first + 1]], completion


def mismatched_datums(items: Sequence[Datum]) -> list[Datum]:
    """The prompt of item i with the completion of item (i + 1) mod n (none for one item)."""
    from kitchen.train.dpo import build_weighted_ce_datum
    from kitchen.train.kto import mismatched

    parts = [split_datum(d) for d in items]
    return [build_weighted_ce_datum(parts[i][0], parts[j][1], 1.0) for i, j in mismatched(len(items))]


def _reference(ctx: Context[KTOConfig]) -> Any:
    state = ctx.use(KTOState)
    if state.reference is None:
        state.reference = ctx.training.sampling_client(base_model=ctx.spec.model)
    return state.reference


def reference_logprobs(ctx: Context[KTOConfig], datums: Sequence[Datum], keys: Sequence[Any] | None = None) -> list[float]:
    """Summed completion logprobs under the frozen base model (cached by ``keys`` when given)."""
    cache = ctx.use(KTOState).ref_cache
    todo = [k for k, key in enumerate(keys or [None] * len(datums)) if key is None or key not in cache]
    if todo:
        ref = _reference(ctx)
        futures = [(k, ref.compute_logprobs(full_sequence(datums[k]))) for k in todo]
        values = {k: completion_sum(f.result()[1:], datums[k].loss_fn_inputs["weights"]) for k, f in futures}
        if keys is None:
            return [values[k] for k in range(len(datums))]
        for k, v in values.items():
            cache[keys[k]] = v
    return [cache[key] for key in keys]  # type: ignore[union-attr]


def policy_logprobs(training: Any, datums: Sequence[Datum], batch_size: int) -> list[float]:
    """Summed completion logprobs at the current weights, ``batch_size`` datums per forward."""
    chunks = [list(datums[i : i + batch_size]) for i in range(0, len(datums), batch_size)]
    futures = [training.forward(chunk) for chunk in chunks]
    out: list[float] = []
    for chunk, future in zip(chunks, futures):
        out.extend(completion_sum(lp, d.loss_fn_inputs["weights"]) for lp, d in zip(future.result().logprobs, chunk))
    return out


class LoadUnpaired(LoadDataset):
    """Read unpaired rows (prompt, completion, label) and check every row."""

    def validate(self, ctx: Context) -> None:
        from kitchen.data.load import load_training_rows

        data = ctx.use(ChatData)
        data.loaded = load_training_rows(ctx.spec, ctx.adapters.dataset_store, kind="unpaired")
        data.train_rows, data.test_rows = data.loaded.train.rows, data.loaded.test.rows
        for part in (data.loaded.train, data.loaded.test):
            check_rows(part.rows, "unpaired", str(part.source), train_on_what_of(ctx.spec))


class TokenizeUnpaired(Stage):
    """Render the rows as two label groups through the SFT token cache; remember each datum's label."""

    def execute(self, ctx: Context[KTOConfig]) -> None:
        from kitchen.data.token_cache import cached_sft_data
        from kitchen.errors import DataError
        from kitchen.stages.session import Session

        session, spec, data, state = ctx.use(Session), ctx.spec, ctx.use(ChatData), ctx.use(KTOState)
        for split in ("train", "test"):
            part = getattr(data.loaded, split)
            rows = list(part.rows)
            items: list[Datum] = []
            labels: list[bool] = []
            for label in (True, False):
                group = [r for r in rows if r["label"] is label]
                if not group:
                    continue
                datums, stats, _ = cached_sft_data(part.source, lambda group=group: group, session.tokenizer,
                                                   session.renderer, source_fingerprint=part.fingerprint,
                                                   extra={**part.extra, "kto_label": label}, num_proc=spec.tokenize_num_proc)
                items.extend(datums)
                labels.extend([label] * len(datums))
            setattr(data, split, items)
            state.labels[split] = labels
            if rows:
                good = sum(labels)
                ctx.emit(ev.RUN_INFO, message=f"{split}: {len(items)} unpaired examples tokenized "
                                              f"({good} desirable, {len(items) - good} undesirable)")
        if not data.train:
            raise DataError(f"No trainable examples in {spec.dataset} with max_length={spec.max_length}.")
        ctx.emit(ev.RUN_INFO, message=f"KTO: beta {spec.kto_beta}, desirable weight {spec.kto_desirable_weight}, "
                                      f"undesirable weight {spec.kto_undesirable_weight}, reference = the frozen base "
                                      f"model {spec.model}")


class KTOLogprobs(Stage):
    """A policy forward over the batch and its mismatched pairs, and their reference logprobs."""

    def execute(self, ctx: Context[KTOConfig]) -> None:
        ctx.pipeline.drain()  # the weights must include every finished step
        data, state = ctx.use(ChatData), ctx.use(KTOState)
        items, indices = data.batch_items(), list(data.batch.indices)
        kl = mismatched_datums(items)
        pol = policy_logprobs(ctx.training, items + kl, 2 * ctx.spec.batch_size)
        state.policy, state.kl_policy = pol[: len(items)], pol[len(items) :]
        state.ref = reference_logprobs(ctx, items, [("train", i) for i in indices])
        state.kl_ref = reference_logprobs(ctx, kl) if kl else []


def kto_result(spec: KTOConfig, policy: Sequence[float], ref: Sequence[float], labels: Sequence[bool],
               kl_policy: Sequence[float], kl_ref: Sequence[float]) -> Any:
    from kitchen.train.kto import kl_estimate, kto_loss

    return kto_loss(policy, ref, labels, kl_estimate(kl_policy, kl_ref), spec.kto_beta,
                    spec.kto_desirable_weight, spec.kto_undesirable_weight)


class KTOStep(Stage):
    """kto_loss and its metrics, and the cross_entropy weights that carry its gradient."""

    def execute(self, ctx: Context[KTOConfig]) -> StepOutput:
        data, state = ctx.use(ChatData), ctx.use(KTOState)
        labels = [state.labels["train"][i] for i in data.batch.indices]
        result = kto_result(ctx.spec, state.policy, state.ref, labels, state.kl_policy, state.kl_ref)
        datums = [reweight(d, w) for d, w in zip(data.batch_items(), result.weights())]
        n = len(labels)
        metrics = {
            "kto_loss": result.loss, "kto_kl": result.kl,
            "desirable_reward": result.desirable_reward, "undesirable_reward": result.undesirable_reward,
            "desirable_fraction": result.desirable / n,
            "policy_logp": sum(state.policy) / n, "ref_logp": sum(state.ref) / n, "examples": float(n),
        }
        return StepOutput(datums, "cross_entropy", None, metrics, loss=result.loss, drop_metrics=SURROGATE_METRICS)


class HeldOutKTO:
    """Held-out KTO loss and rewards against the frozen reference."""

    def __init__(self, ctx: Context[KTOConfig]) -> None:
        self.ctx = ctx

    def __call__(self, env: EvalEnv) -> EvalResult:
        data, state = self.ctx.use(ChatData), self.ctx.use(KTOState)
        n = min(len(data.test), env.spec.eval_max_examples)
        if not env.want_metrics or not n:
            return EvalResult()
        items, labels = data.test[:n], state.labels["test"][:n]
        kl = mismatched_datums(items)
        pol = policy_logprobs(env.training, items + kl, 2 * env.spec.batch_size)
        ref = reference_logprobs(self.ctx, items, [("test", i) for i in range(n)])
        kl_ref = reference_logprobs(self.ctx, kl) if kl else []
        r = kto_result(env.spec, pol[:n], ref, labels, pol[n:], kl_ref)
        return EvalResult({"eval_kto_loss": r.loss, "eval_kto_kl": r.kl, "eval_desirable_reward": r.desirable_reward,
                           "eval_undesirable_reward": r.undesirable_reward})


def kto_evaluators(ctx: Context[KTOConfig]) -> list[Any]:
    """Held-out KTO metrics (when there is a test set) and greedy previews of the first prompts."""
    from kitchen.evaluators import GreedyPreview

    data = ctx.use(ChatData)
    rows = (data.test_rows or data.train_rows)[: ctx.spec.num_preview_samples]
    prompts = [[{"role": m["role"], "content": m["content"]} for m in r["messages"] if not m.get("weight")] for r in rows]
    return ([HeldOutKTO(ctx)] if data.test else []) + [GreedyPreview(prompts)]
