"""Preference optimisation (DPO), read top to bottom as its algorithm:

    load pairs -> open session -> tokenize -> (restore) -> evaluate (held-out DPO accuracy) + preview
    for each epoch, for each batch of pairs:
        reference logprobs (the frozen *starting* model, cached per example; on resume
            still the original start, never the resumed weights)
        policy logprobs (fresh forward at the current weights)
        dpo_loss + per-sequence weights w = +-beta * sigmoid(-beta * margin) / N
        forward_backward(cross_entropy with w) == the DPO gradient, + optim_step
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from pydantic import Field

from kitchen.config.spec import BatchKeys, DatasetKeys, RunSpec
from kitchen.engine.ir import Workflow, stage
from kitchen.stages.data import LoadDataset, PlanBatches
from kitchen.stages.preference import (
    DPOStep,
    PolicyLogprobs,
    ReferenceLogprobs,
    TokenizePreferences,
    preference_evaluators,
)
from kitchen.stages.session import OpenSession
from kitchen.workflows.common import epochs_of_batches, finish, restore_and_evaluate


class PreferenceConfig(RunSpec, DatasetKeys, BatchKeys):
    """DPO: the common keys, a preference dataset, batching, and beta."""

    dpo_beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference")


PREFERENCE = Workflow(
    name="preference",
    description="DPO on (prompt, chosen, rejected) pairs against the frozen starting model as reference.",
    config=PreferenceConfig,
    nodes=(
        stage(LoadDataset, kind="preference"),
        stage(OpenSession),
        stage(TokenizePreferences),
        stage(PlanBatches),
        *restore_and_evaluate(preference_evaluators),
        epochs_of_batches([stage(ReferenceLogprobs), stage(PolicyLogprobs), stage(DPOStep)]),
        *finish(),
    ),
)
