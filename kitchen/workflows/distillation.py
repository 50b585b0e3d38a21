"""Distillation from a frozen teacher, read top to bottom as its algorithm:

    load prompts -> open session -> teacher (alias, path or RUN_DIR) -> (restore)
    evaluate (held-out reverse KL to the teacher) + preview
    for each step:
        prompts for this step (seed, step)
        on_policy:  in parallel lanes: the student samples, the teacher scores its tokens;
                    advantage per token = kl_coef * (teacher_lp - student_lp)  (reverse KL)
        off_policy: in parallel lanes: the teacher samples; its completions become SFT rows
        forward_backward (importance_sampling | cross_entropy) -> optim_step -> log teacher_kl
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from kitchen.engine.ir import Workflow, conditional, every, loop, stage
from kitchen.stages.distill import on_policy
from kitchen.stages.rl import steps
from kitchen.workflows import register_workflow
from kitchen.workflows.reinforcement import lanes

DISTILLATION = register_workflow(
    Workflow(
        name="distillation",
        description="On-policy (reverse-KL advantages) or off-policy (teacher SFT) distillation from a teacher model.",
        nodes=(
            stage("load_dataset"),
            stage("init_session"),
            stage("distill_setup"),
            stage("restore"),
            stage("distill_evaluate", label="evaluate (before)"),
            stage("preview", label="preview (before)", tag="before"),
            loop(
                "step",
                over=steps,
                var="step_index",
                body=[
                    stage("distill_batch", label="prompts"),
                    conditional(
                        on_policy,
                        then=[lanes("student_rollout", "student rollout"), stage("reverse_kl_advantages")],
                        otherwise=[lanes("teacher_rollout", "teacher sample"), stage("teacher_sft_datums")],
                    ),
                    stage("train_batch", label="forward_backward"),
                    stage("optim_step"),
                    stage("log_step"),
                    conditional(every("eval_every"), [stage("distill_evaluate")]),
                    conditional(every("save_every"), [stage("checkpoint")]),
                ],
            ),
            stage("drain"),
            stage("distill_evaluate", label="evaluate (after)"),
            stage("preview", label="preview (after)", tag="after"),
            stage("checkpoint", label="checkpoint (final)"),
            stage("save_weights"),
        ),
        params=(
            "model", "teacher", "distill_mode", "dataset", "test_dataset", "max_steps", "group_size",
            "groups_per_batch", "max_tokens", "temperature", "kl_coef", "loss_fn", "rollout_concurrency",
            "learning_rate", "lr_schedule", "lora_rank", "seed", "save_every", "eval_every", "eval_max_examples",
        ),
    )
)
