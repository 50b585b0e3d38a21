"""The one evaluation lifecycle: which evaluators run, when, and what they emit.

``PrepareEvaluators`` builds the workflow's own evaluators (a function of the context
the workflow passes in) plus the recipe's ``evaluators:`` list. A recipe's evaluator that
raises is dropped with one ``run.warning``, as a failing sink is: an extra benchmark must
not cost the training run. The workflow's own evaluators still fail the run. ``Evaluate`` runs them:
once per step at most (an ``eval_every`` evaluation at the last step is not repeated by
the final one), with ``eval.start`` / ``eval.result`` / ``eval.stop`` events, the history
kept for run.json, and, when tagged ``before`` / ``after``, the evaluators' previews as
``sample.completion`` events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

from kitchen.engine.context import Context
from kitchen.engine.pipeline import outside_training
from kitchen.engine.stage import Stage
from kitchen.evaluators import EvalEnv, as_result
from kitchen.telemetry import events as ev


@dataclass
class Evaluation:
    evaluators: list[tuple[str, Any]] = field(default_factory=list)  # (name for messages, evaluator)
    optional: set[int] = field(default_factory=set)  # ids of the recipe's evaluators: a failure drops them


def label_of(entry: Any) -> str:
    """How messages name a recipe's evaluator: its short name or its ``_target_``."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and "_target_" not in entry and len(entry) == 1:
        return str(next(iter(entry)))
    return str(entry.get("_target_")) if isinstance(entry, dict) else str(entry)


@dataclass(frozen=True)
class PrepareEvaluators(Stage):
    """The workflow's own evaluators (``builtin(ctx)``) plus the recipe's ``evaluators:`` list."""

    builtin: Optional[Callable[[Context], list[Any]]] = None

    def validate(self, ctx: Context) -> None:
        from kitchen.config.instantiate import resolve, target_of

        for entry in ctx.spec.evaluators:
            factory = resolve("evaluators", entry)
            check = getattr(factory, "check_options", None)  # an evaluator's own preflight (lm_eval: its tasks exist)
            if callable(check):
                check(**target_of("evaluators", entry)[1])

    def execute(self, ctx: Context) -> None:
        from kitchen.config.instantiate import build

        state = ctx.use(Evaluation)
        own = self.builtin(ctx) if self.builtin else []
        state.evaluators = [(type(e).__name__, e) for e in own]
        for entry in ctx.spec.evaluators:
            evaluator = build("evaluators", entry)
            state.evaluators.append((label_of(entry), evaluator))
            state.optional.add(id(evaluator))


@dataclass(frozen=True)
class Evaluate(Stage):
    """Run every evaluator (skipped if already done at this step); ``tag`` also shows previews."""

    tag: Optional[Literal["before", "after"]] = None

    @outside_training
    def execute(self, ctx: Context) -> None:
        state = ctx.use(Evaluation)
        fresh = ctx.progress.last_eval_step != ctx.step
        previews = ctx.spec.num_preview_samples if self.tag else 0
        todo = [(n, e) for n, e in state.evaluators
                if (fresh and getattr(e, "gives_metrics", True)) or (previews and getattr(e, "shows_samples", False))]
        if not todo:
            return
        env = EvalEnv(ctx, want_metrics=fresh, previews=previews)
        t0 = time.perf_counter()
        if fresh:
            ctx.emit(ev.EVAL_START, step=ctx.step, split="test")
        metrics: dict[str, float] = {}
        for name, evaluator in todo:
            try:
                result = as_result(evaluator(env), name)
            except Exception as exc:
                if id(evaluator) not in state.optional:
                    raise
                state.evaluators = [(n, e) for n, e in state.evaluators if e is not evaluator]
                ctx.emit(ev.RUN_WARNING, message=f"evaluator {name} failed at step {ctx.step} and is dropped for the "
                         f"rest of the run: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            if fresh:
                metrics.update(result.metrics)
            for sample in result.samples[:previews]:
                ctx.emit(ev.SAMPLE, tag=self.tag, step=ctx.step, prompt=sample.prompt, completion=sample.completion, **sample.extra)
        if not fresh:
            return
        ctx.progress.last_eval_step = ctx.step
        if metrics:
            ctx.record.eval_history.append({"step": ctx.step, **metrics})
            ctx.metrics.update(metrics)
            ctx.emit(ev.EVAL_RESULT, step=ctx.step, split="test", metrics=metrics)
        ctx.emit(ev.EVAL_STOP, step=ctx.step, duration_s=time.perf_counter() - t0)
