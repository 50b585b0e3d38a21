"""Preference optimisation (the DPO family, SimPO, ORPO), read top to bottom as its algorithm:

    load pairs -> open session -> tokenize -> (restore) -> evaluate (held-out accuracy) + preview
    for each epoch, for each batch of pairs:
        loss=dpo only: reference logprobs (the frozen *starting* model, cached per example;
            on resume still the original start, never the resumed weights); simpo and
            orpo are reference-free and skip this forward
        policy logprobs (fresh forward at the current weights)
        the loss (loss=dpo with dpo_loss=sigmoid | ipo | hinge | robust, or simpo, orpo;
            kitchen.train.preference_losses) + per-sequence weights w = -dL/dlogp
        forward_backward(cross_entropy with w) == the loss's gradient, + optim_step
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kitchen.config.spec import BatchKeys, DatasetKeys, RunSpec
from kitchen.engine.ir import Workflow, conditional, stage
from kitchen.errors import ConfigError
from kitchen.stages.data import LoadDataset, PlanBatches
from kitchen.stages.preference import (
    DPOStep,
    PolicyLogprobs,
    ReferenceLogprobs,
    TokenizePreferences,
    needs_reference,
    preference_evaluators,
)
from kitchen.stages.session import OpenSession
from kitchen.workflows.common import epochs_of_batches, finish, restore_and_evaluate


class PreferenceConfig(RunSpec, DatasetKeys, BatchKeys):
    """The preference family: the common keys, a preference dataset, batching, the loss and its keys."""

    loss: Literal["dpo", "simpo", "orpo"] = Field(
        "dpo", description="dpo (against the frozen reference; variant: dpo_loss), simpo or orpo (reference-free: "
        "no reference forward)")
    dpo_loss: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="loss=dpo: sigmoid (DPO), ipo (Azar et al., mean token logprobs), hinge (SLiC), "
        "robust (Chowdhury et al., with label_smoothing); TRL's DPOConfig loss_type")
    dpo_beta: float = Field(0.1, gt=0, description="beta: DPO's temperature (how far the policy may move from the "
                            "reference); SimPO's reward scale")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="dpo_loss=sigmoid (cDPO) or robust: the assumed fraction eps of flipped "
        "labels, in [0, 0.5)")
    simpo_gamma: float = Field(0.5, ge=0, description="loss=simpo: the target reward margin gamma (TRL's simpo_gamma)")
    orpo_lambda: float = Field(0.1, gt=0, description="loss=orpo: the weight lambda of the odds-ratio term next to "
                               "the chosen NLL (TRL ORPOConfig's beta)")

    @model_validator(mode="after")
    def _keys_apply(self) -> "PreferenceConfig":
        check_preference_keys(self)
        return self


def check_preference_keys(spec: PreferenceConfig) -> None:
    """A key set away from its default that the chosen loss does not read: one paragraph, exit 2."""
    fields = type(spec).model_fields
    owners = {"dpo_loss": ("dpo",), "label_smoothing": ("dpo",), "simpo_gamma": ("simpo",), "orpo_lambda": ("orpo",),
              "dpo_beta": ("dpo", "simpo")}
    for key, losses in owners.items():
        if spec.loss not in losses and getattr(spec, key) != fields[key].default:
            raise ConfigError(f"{key}={getattr(spec, key)} has no effect with loss={spec.loss}: it belongs to loss="
                              f"{' or loss='.join(losses)} of the preference workflow. Drop {key}, or set loss="
                              f"{losses[0]} (loss= is one of dpo, simpo, orpo).")
    if spec.label_smoothing and spec.dpo_loss not in ("sigmoid", "robust"):
        raise ConfigError(f"label_smoothing={spec.label_smoothing} has no effect with dpo_loss={spec.dpo_loss}: it "
                          "applies to dpo_loss=sigmoid (cDPO) or dpo_loss=robust; drop it or pick one of those.")


PREFERENCE = Workflow(
    name="preference",
    description="DPO (sigmoid, ipo, hinge, robust) against the frozen starting model, or reference-free SimPO / ORPO, "
    "on (prompt, chosen, rejected) pairs.",
    config=PreferenceConfig,
    nodes=(
        stage(LoadDataset, kind="preference"),
        stage(OpenSession),
        stage(TokenizePreferences),
        stage(PlanBatches),
        *restore_and_evaluate(preference_evaluators),
        epochs_of_batches([conditional(needs_reference, [stage(ReferenceLogprobs)]), stage(PolicyLogprobs), stage(DPOStep)]),
        *finish(),
    ),
)
