"""Reinforcement learning (GRPO-style), read top to bottom as its algorithm:

    open session -> make env -> (restore) -> evaluate (greedy accuracy) + preview
    for each step:
        prompts for this step (seed, step) + sampler over the current weights
        in rollout_concurrency parallel lanes: sample group_size completions per prompt,
            score them, reference logprobs when kl_coef > 0
        advantages = reward - group mean (- kl_coef * (logp - logp_ref) per token)
        forward_backward(loss_fn: importance_sampling | ppo) + optim_step
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import Field

from kitchen.config.spec import RolloutKeys, RunSpec
from kitchen.engine.ir import Workflow, loop, stage
from kitchen.stages.reinforcement import RLPrompts, RLSetup, RLStep, Rollout, rl_evaluators
from kitchen.stages.rollouts import steps
from kitchen.stages.session import OpenSession
from kitchen.workflows.common import finish, periodic, restore_and_evaluate


class ReinforcementConfig(RunSpec, RolloutKeys):
    """RL: the common keys, the rollout keys, and the environment."""

    env: Union[str, dict[str, Any]] = Field("arithmetic", description="RL environment: a name, or a {_target_: ...} node")


REINFORCEMENT = Workflow(
    name="reinforcement",
    description="GRPO-style RL on an environment: group-centred advantages, importance_sampling or ppo loss.",
    config=ReinforcementConfig,
    nodes=(
        stage(OpenSession),
        stage(RLSetup),
        *restore_and_evaluate(rl_evaluators),
        loop("step", over=steps, body=[stage(RLPrompts), stage(Rollout), stage(RLStep), *periodic()]),
        *finish(),
    ),
)
