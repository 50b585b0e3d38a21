"""KTO (Ethayarajh et al. 2024) on unpaired, labelled completions, read top to bottom as its algorithm:

    load rows {prompt, completion, label} -> open session -> tokenize (desirable, undesirable)
        -> (restore) -> evaluate (held-out KTO loss) + preview
    for each epoch, for each batch of examples:
        one policy forward over the batch and its mismatched pairs (prompt i, completion i+1);
        reference logprobs of both (the frozen starting model; the batch's are cached)
        z0 = max(0, mean mismatched log-ratio), detached; kto_loss + per-sequence weights
        w = -dL/dlogp (kitchen.train.kto)
        forward_backward(cross_entropy with w) == the KTO gradient, + optim_step
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from pydantic import Field

from kitchen.config.spec import BatchKeys, DatasetKeys, RunSpec
from kitchen.engine.ir import Workflow, stage
from kitchen.stages.data import PlanBatches
from kitchen.stages.kto import KTOLogprobs, KTOStep, LoadUnpaired, TokenizeUnpaired, kto_evaluators
from kitchen.stages.session import OpenSession
from kitchen.workflows.common import epochs_of_batches, finish, restore_and_evaluate


class KTOConfig(RunSpec, DatasetKeys, BatchKeys):
    """KTO: the common keys, an unpaired preference dataset, batching, beta and the two class weights."""

    kto_beta: float = Field(0.1, gt=0, description="KTO's beta: how far the policy may move from the reference (TRL KTOConfig.beta)")
    kto_desirable_weight: float = Field(1.0, gt=0, description="lambda_D: the weight of desirable (label=true) examples")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="lambda_U: the weight of undesirable (label=false) examples")


KTO = Workflow(
    name="kto",
    description="KTO on unpaired (prompt, completion, label) rows against the frozen starting model as reference.",
    config=KTOConfig,
    nodes=(
        stage(LoadUnpaired, kind="unpaired"),
        stage(OpenSession),
        stage(TokenizeUnpaired),
        stage(PlanBatches),
        *restore_and_evaluate(kto_evaluators),
        epochs_of_batches([stage(KTOLogprobs), stage(KTOStep)]),
        *finish(),
    ),
)
