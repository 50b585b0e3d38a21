"""Preference optimisation (DPO), read top to bottom as its algorithm:

    load pairs -> open session -> tokenize -> (restore) -> evaluate (test DPO accuracy) + preview
    for each epoch, for each batch of pairs:
        reference logprobs (the frozen *starting* model, cached per example; on resume
            still the original start, never the resumed weights)
        policy logprobs (fresh forward at the current weights)
        dpo_loss + per-sequence weights w = +-beta * sigmoid(-beta * margin) / N
        forward_backward(cross_entropy with w) == the DPO gradient -> optim_step -> log dpo_loss
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from kitchen.engine.ir import Workflow, conditional, every, loop, stage
from kitchen.workflows import register_workflow
from kitchen.workflows.supervised import batches, epochs

PREFERENCE = register_workflow(
    Workflow(
        name="preference",
        description="DPO on (prompt, chosen, rejected) pairs against the frozen starting model as reference.",
        nodes=(
            stage("load_dataset"),
            stage("init_session"),
            stage("tokenize_preferences"),
            stage("plan_batches"),
            stage("dpo_setup"),
            stage("restore"),
            stage("dpo_evaluate", label="evaluate (before)", tag="before"),
            loop(
                "epoch",
                over=epochs,
                body=[
                    loop(
                        "batch",
                        over=batches,
                        body=[
                            stage("render_batch"),
                            stage("reference_logprobs"),
                            stage("policy_logprobs"),
                            stage("dpo_weights"),
                            stage("train_batch", label="forward_backward"),
                            stage("optim_step"),
                            stage("log_step"),
                            conditional(every("eval_every"), [stage("dpo_evaluate")]),
                            conditional(every("save_every"), [stage("checkpoint")]),
                        ],
                    ),
                    stage("end_epoch"),
                ],
            ),
            stage("drain"),
            stage("dpo_evaluate", label="evaluate (after)", tag="after"),
            stage("checkpoint", label="checkpoint (final)"),
            stage("save_weights"),
        ),
        params=(
            "model", "dataset", "test_dataset", "renderer", "max_length", "dpo_beta", "learning_rate", "lr_schedule",
            "warmup_steps", "batch_size", "epochs", "max_steps", "lora_rank", "seed", "save_every", "eval_every",
            "eval_max_examples",
        ),
    )
)
