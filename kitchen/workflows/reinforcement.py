"""Reinforcement learning (GRPO-style), read top to bottom as its algorithm:

    open session -> make env -> (restore) -> evaluate (greedy accuracy) + preview
    for each step:
        prompts for this step (seed, step) + sampler over the current weights
        in parallel (rollout_concurrency lanes): sample group_size completions per prompt,
            score them, reference logprobs when kl_coef > 0
        advantages = reward - group mean (- kl_coef * (logp - logp_ref) per token)
        forward_backward(loss_fn: importance_sampling | ppo) -> optim_step -> log
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from kitchen.engine.ir import ParallelNode, Workflow, conditional, every, loop, parallel, stage
from kitchen.stages.rl import steps
from kitchen.workflows import register_workflow

ROLLOUT_LANES = 4  # parallel branches in the tree; rollout_concurrency (<= this) of them are busy


def lanes(stage_name: str, label: str, n: int = ROLLOUT_LANES) -> ParallelNode:
    """``n`` rollout lanes in a ``parallel`` node; lane i owns the groups g with g % lanes == i."""
    return parallel(
        *[[stage(stage_name, label=f"{label} (lane {i + 1}/{n})", lane=i, lanes=n)] for i in range(n)],
        max_concurrency=n,
        label=f"{label}s",
    )


REINFORCEMENT = register_workflow(
    Workflow(
        name="reinforcement",
        description="GRPO-style RL on an environment: group-centred advantages, importance_sampling or ppo loss.",
        nodes=(
            stage("init_session"),
            stage("rl_setup"),
            stage("restore"),
            stage("rl_evaluate", label="evaluate (before)", tag="before"),
            loop(
                "step",
                over=steps,
                var="step_index",
                body=[
                    stage("rl_batch", label="prompts + sampler"),
                    lanes("rollout", "rollout"),
                    stage("rl_advantages", label="advantages + datums"),
                    stage("train_batch", label="forward_backward"),
                    stage("optim_step"),
                    stage("log_step"),
                    conditional(every("eval_every"), [stage("rl_evaluate")]),
                    conditional(every("save_every"), [stage("checkpoint")]),
                ],
            ),
            stage("drain"),
            stage("rl_evaluate", label="evaluate (after)", tag="after"),
            stage("checkpoint", label="checkpoint (final)"),
            stage("save_weights"),
        ),
        params=(
            "model", "env", "max_steps", "group_size", "groups_per_batch", "max_tokens", "temperature", "loss_fn",
            "kl_coef", "rollout_concurrency", "learning_rate", "lr_schedule", "warmup_steps", "lora_rank", "seed",
            "save_every", "eval_every", "eval_max_examples",
        ),
    )
)
