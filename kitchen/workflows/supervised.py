"""Supervised fine-tuning, read top to bottom as its algorithm:

    load data -> open session -> tokenize -> (restore) -> evaluate + preview
    for each epoch, for each batch:
        forward_backward + optim_step (cross_entropy on the weighted tokens)
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from kitchen.config.spec import BatchKeys, ChatDataKeys, RunSpec
from kitchen.engine.ir import Workflow, stage
from kitchen.stages.data import LoadDataset, PlanBatches, TokenizeChat
from kitchen.stages.session import OpenSession
from kitchen.stages.supervised import SupervisedStep, chat_evaluators
from kitchen.workflows.common import epochs_of_batches, finish, restore_and_evaluate


class SupervisedConfig(RunSpec, ChatDataKeys, BatchKeys):
    """Supervised fine-tuning: the common keys plus the chat data and batching keys."""


SUPERVISED = Workflow(
    name="supervised",
    description="Supervised fine-tuning on chat data with per-token loss weights (cross_entropy).",
    config=SupervisedConfig,
    nodes=(
        stage(LoadDataset, streams=True),
        stage(OpenSession),
        stage(TokenizeChat),
        stage(PlanBatches),
        *restore_and_evaluate(chat_evaluators),
        epochs_of_batches([stage(SupervisedStep)]),
        *finish(),
    ),
)
