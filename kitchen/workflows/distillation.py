"""Distillation from a frozen teacher, read top to bottom as its algorithm:

    load prompts -> open session -> teacher (alias, path or RUN_DIR) -> (restore)
    evaluate (held-out reverse KL to the teacher) + preview
    for each step:
        prompts for this step (seed, step)
        on_policy:  in rollout_concurrency lanes: the student samples, the teacher scores its tokens;
                    advantage per token = kl_coef * (teacher_lp - student_lp)  (reverse KL)
        off_policy: in rollout_concurrency lanes: the teacher samples; its completions become SFT rows
        forward_backward (importance_sampling | cross_entropy) + optim_step
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from kitchen.config.spec import ChatDataKeys, RolloutKeys, RunSpec
from kitchen.engine.ir import Workflow, conditional, loop, stage
from kitchen.stages.data import LoadDataset
from kitchen.stages.distillation import (
    DistillPrompts,
    DistillSetup,
    ReverseKLStep,
    StudentRollout,
    TeacherRollout,
    TeacherSFTStep,
    distill_evaluators,
    on_policy,
)
from kitchen.stages.rollouts import steps
from kitchen.stages.session import OpenSession
from kitchen.workflows.common import finish, periodic, restore_and_evaluate


class DistillationConfig(RunSpec, ChatDataKeys, RolloutKeys):
    """Distillation: the common keys, chat prompts, the rollout keys, the teacher and the mode."""

    teacher: Optional[str] = Field(None, description="teacher model (alias, path, or RUN_DIR)")
    distill_mode: Literal["on_policy", "off_policy"] = Field("on_policy", description="on_policy: the student samples and the teacher scores; off_policy: the teacher samples and the student imitates")


DISTILLATION = Workflow(
    name="distillation",
    description="On-policy (reverse-KL advantages) or off-policy (teacher SFT) distillation from a teacher model.",
    config=DistillationConfig,
    nodes=(
        stage(LoadDataset),
        stage(OpenSession),
        stage(DistillSetup),
        *restore_and_evaluate(distill_evaluators),
        loop("step", over=steps, body=[
            stage(DistillPrompts),
            conditional(
                on_policy,
                then=[stage(StudentRollout), stage(ReverseKLStep)],
                otherwise=[stage(TeacherRollout), stage(TeacherSFTStep)],
            ),
            *periodic(),
        ]),
        *finish(),
    ),
)
