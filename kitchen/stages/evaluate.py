"""The one evaluation lifecycle: which evaluators run, when, and what they emit.

``PrepareEvaluators`` builds the workflow's own evaluators (a function of the context
the workflow passes in) plus the recipe's ``evaluators:`` list. ``Evaluate`` runs them:
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


@dataclass(frozen=True)
class PrepareEvaluators(Stage):
    """The workflow's own evaluators (``builtin(ctx)``) plus the recipe's ``evaluators:`` list."""

    builtin: Optional[Callable[[Context], list[Any]]] = None

    def validate(self, ctx: Context) -> None:
        from kitchen.config.instantiate import resolve

        for entry in ctx.spec.evaluators:
            resolve("evaluators", entry)

    def execute(self, ctx: Context) -> None:
        from kitchen.config.instantiate import build

        state = ctx.use(Evaluation)
        own = self.builtin(ctx) if self.builtin else []
        state.evaluators = [(type(e).__name__, e) for e in own]
        for entry in ctx.spec.evaluators:
            state.evaluators.append((str(entry if isinstance(entry, str) else entry.get("_target_")), build("evaluators", entry)))


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
            result = as_result(evaluator(env), name)
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
