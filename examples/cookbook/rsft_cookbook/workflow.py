"""Rejection-sampling fine-tuning (RSFT, as in RAFT / ReST / STaR), read as its algorithm:

    open session -> make env -> (restore) -> evaluate (greedy accuracy) + preview
    for each step:
        sample k completions per prompt from the current policy, score them with the env
        keep each prompt's best (reward >= keep_threshold)
        SFT (cross_entropy) on the kept completions: forward_backward + optim_step
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights

Everything but the three step stages is kitchen's own.
"""

from __future__ import annotations

from typing import Any, Union

from kitchen.api import OpenSession, RunSpec, Workflow, finish, loop, periodic, restore_and_evaluate, stage, steps
from pydantic import Field

from rsft_cookbook.stages import KeepBest, RSFTSetup, SampleK, SFTOnKept, env_accuracy


class RSFTConfig(RunSpec):
    """RSFT: the common keys plus the task, how much to sample, and what to keep."""

    env: Union[str, dict[str, Any]] = Field("letters", description="the task: an env name, or a {_target_: ...} node")
    prompts_per_step: int = Field(4, gt=0, description="prompts sampled each step")
    samples_per_prompt: int = Field(4, gt=0, description="k: completions sampled per prompt")
    max_tokens: int = Field(16, gt=0, description="sampled tokens per completion")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    keep_threshold: float = Field(0.5, description="a completion is kept only if its reward is at least this")
    keep_top: int = Field(1, gt=0, description="completions kept per prompt (the best ones)")


RSFT = Workflow(
    name="rsft",
    description="Rejection-sampling fine-tuning: sample k completions per prompt, keep the best by reward, SFT on them.",
    config=RSFTConfig,
    nodes=(
        stage(OpenSession),
        stage(RSFTSetup),
        *restore_and_evaluate(env_accuracy),
        loop("step", over=steps, body=[stage(SampleK), stage(KeepBest), stage(SFTOnKept), *periodic()]),
        *finish(),
    ),
)
