"""Supervised fine-tuning, read top to bottom as its algorithm:

    load data -> open session -> tokenize -> (restore) -> evaluate + preview
    for each epoch, for each batch:
        forward_backward -> optim_step -> log
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from kitchen.engine.context import Context
from kitchen.engine.ir import Workflow, conditional, every, loop, stage
from kitchen.workflows import register_workflow


def epochs(ctx: Context):
    return ctx.state["plan"].epochs_from(ctx.step)


def batches(ctx: Context):
    return ctx.state["plan"].batches_in_epoch(ctx.state["epoch"], ctx.step)


SUPERVISED = register_workflow(
    Workflow(
        name="supervised",
        description="Supervised fine-tuning on chat data with per-token loss weights (cross_entropy).",
        nodes=(
            stage("load_dataset"),
            stage("init_session"),
            stage("tokenize_dataset"),
            stage("plan_batches"),
            stage("restore"),
            stage("evaluate", label="evaluate (before)"),
            stage("preview", label="preview (before)", tag="before"),
            loop(
                "epoch",
                over=epochs,
                body=[
                    loop(
                        "batch",
                        over=batches,
                        body=[
                            stage("render_batch"),
                            stage("forward_backward"),
                            stage("optim_step"),
                            stage("log_step"),
                            conditional(every("eval_every"), [stage("evaluate")]),
                            conditional(every("save_every"), [stage("checkpoint")]),
                        ],
                    ),
                    stage("end_epoch"),
                ],
            ),
            stage("drain"),
            stage("evaluate", label="evaluate (after)"),
            stage("preview", label="preview (after)", tag="after"),
            stage("checkpoint", label="checkpoint (final)"),
            stage("save_weights"),
        ),
        params=(
            "model", "dataset", "test_dataset", "renderer", "train_on_what", "max_length", "learning_rate",
            "lr_schedule", "warmup_steps", "batch_size", "epochs", "max_steps", "lora_rank", "seed",
            "save_every", "eval_every", "pipeline_depth",
        ),
    )
)
