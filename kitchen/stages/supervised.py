"""The supervised step and the supervised evaluators."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitchen.engine.context import Context
from kitchen.engine.pipeline import StepOutput
from kitchen.engine.stage import Stage
from kitchen.stages.data import ChatData

if TYPE_CHECKING:  # typed keys of the workflow's config, no import at run time
    from kitchen.workflows.supervised import SupervisedConfig


class SupervisedStep(Stage):
    """forward_backward + optim_step: cross_entropy on the batch's weighted tokens."""

    def execute(self, ctx: Context[SupervisedConfig]) -> StepOutput:
        return StepOutput(ctx.use(ChatData).batch_items(), "cross_entropy")


def chat_evaluators(ctx: Context[SupervisedConfig]) -> list[Any]:
    """Held-out NLL (when there is a test set) and greedy previews of the first test (or train) prompts."""
    from kitchen.evaluators import GreedyPreview, TestNLL
    from kitchen.train.messages import prompt_part

    data = ctx.use(ChatData)
    found: list[Any] = [TestNLL(data.test, ctx.spec.batch_size)] if data.test else []
    rows = data.test_rows or data.train_rows
    prompts = [prompt_part(r["messages"]) for r in rows[: ctx.spec.num_preview_samples] if r.get("messages")]
    found.append(GreedyPreview(prompts))
    return found
