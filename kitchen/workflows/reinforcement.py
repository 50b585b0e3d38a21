"""Reinforcement learning (GRPO-style), read top to bottom as its algorithm:

    open session -> make env -> (restore) -> evaluate (greedy accuracy) + preview
    for each step:
        prompts for this step (seed, step) + sampler over the current weights
        in rollout_concurrency parallel lanes: sample group_size completions per prompt,
            score them, reference logprobs when kl_coef > 0
        dynamic_sampling: drop tied groups, sample new prompts until groups_per_batch remain
        advantages (advantage=: group_mean | group_mean_std | rloo | reinforce_pp), overlong
            shaping, KL (kl_in=reward: - kl_coef * k(logp, logp_ref) per token), scaled by
            the aggregation (token_sum | token_mean | sequence_mean)
        forward_backward(loss_fn: importance_sampling | ppo) + optim_step, or (cispo,
            importance_level=sequence, kl_in=loss) a forward, then the exact gradient as
            cross_entropy weights; loss= names a preset of these keys (kitchen.train.grpo)
        every eval_every: evaluate;  every save_every: checkpoint
    evaluate + preview -> checkpoint -> final weights
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, model_validator

from kitchen.config.spec import RolloutKeys, RunSpec
from kitchen.engine.ir import Workflow, loop, stage
from kitchen.errors import ConfigError
from kitchen.stages.reinforcement import DynamicSampling, RLPrompts, RLSetup, RLStep, Rollout, rl_evaluators
from kitchen.stages.rollouts import steps
from kitchen.stages.session import OpenSession
from kitchen.train.dpo import PREFERENCE_LOSSES
from kitchen.train.losses import CLIP_HIGH, CLIP_LOW
from kitchen.workflows.common import finish, periodic, restore_and_evaluate


class ReinforcementConfig(RunSpec, RolloutKeys):
    """RL: the common keys, the rollout keys, the environment, and the GRPO family's keys."""

    env: Union[str, dict[str, Any]] = Field("arithmetic", description="RL environment: a name, or a {_target_: ...} node")
    loss_fn: Literal["importance_sampling", "ppo", "cispo"] = Field(
        "importance_sampling", description="policy-gradient loss: importance_sampling, ppo (clipped ratio) or cispo "
        "(clipped, detached IS weight; MiniMax-M1)")
    loss: Optional[str] = Field(
        None, description="a named preset of the keys below: grpo | dr_grpo | dapo | gspo | cispo (docs/workflows.md "
        "lists what each sets); a key set to a third value is an error")
    advantage: Literal["group_mean", "group_mean_std", "rloo", "reinforce_pp"] = Field(
        "group_mean", description="advantage estimator: group_mean (r - mean), group_mean_std (GRPO), rloo "
        "(leave-one-out), reinforce_pp (REINFORCE++-baseline: batch-whitened)")
    aggregation: Literal["token_mean", "token_sum", "sequence_mean"] = Field(
        "token_sum", description="how token losses make the step's loss: token_sum (Tinker's sum), token_mean "
        "(DAPO: / batch tokens), sequence_mean (GRPO: per-sequence mean, then mean)")
    importance_level: Literal["token", "sequence"] = Field(
        "token", description="the importance ratio per token, or per sequence (GSPO: exp of the mean log-ratio)")
    clip_low: float = Field(CLIP_LOW, ge=0, le=1, description="ppo / cispo: the ratio is kept >= 1 - clip_low")
    clip_high: float = Field(CLIP_HIGH, ge=0, description="ppo / cispo: the ratio is kept <= 1 + clip_high (DAPO's clip-higher: 0.28)")
    dynamic_sampling: bool = Field(
        False, description="DAPO: drop groups whose rewards are all equal and sample new prompts until "
        "groups_per_batch groups remain (at most dynamic_sampling_max_rounds extra rounds)")
    dynamic_sampling_max_rounds: int = Field(4, ge=1, description="with dynamic_sampling: extra sampling rounds per step at most")
    overlong: Literal["none", "filter", "soft_punish"] = Field(
        "none", description="DAPO: truncated samples (max_tokens reached) are kept (none), left out of the loss "
        "(filter), or rewarded less inside the last overlong_buffer tokens (soft_punish)")
    overlong_buffer: int = Field(8, gt=0, description="soft_punish: the last N of max_tokens where the length penalty ramps to -overlong_penalty")
    overlong_penalty: float = Field(1.0, ge=0, description="soft_punish: the penalty at max_tokens")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="with kl_coef > 0: the per-token KL estimate k1, k2 or k3 (Schulman)")
    kl_in: Literal["reward", "loss"] = Field(
        "reward", description="with kl_coef > 0: the KL folded into the advantages (reward) or added to the loss (loss)")

    @model_validator(mode="before")
    @classmethod
    def _apply_loss_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("loss") in (None, ""):
            return data
        from kitchen.train.grpo import PRESETS, apply_preset

        name = data["loss"]
        if name not in PRESETS:
            from kitchen.errors import did_you_mean

            where = " (a preference loss: recipe=dpo_basic loss=...)" if name in PREFERENCE_LOSSES else ""
            raise ConfigError(f"loss={name!r} is not a reinforcement loss preset{where}; choose one of "
                              f"{', '.join(PRESETS)}, or leave loss unset and set the keys one by one."
                              + did_you_mean(str(name), list(PRESETS)))
        defaults = {k: f.default for k, f in cls.model_fields.items() if not f.is_required()}
        values, conflicts = apply_preset(name, data, defaults)
        if conflicts:
            raise ConfigError(f"loss={name} contradicts {', '.join(conflicts)}. A preset sets the keys still at their "
                              "defaults; drop loss= and spell the keys out, or drop the contradicting key.")
        return values

    @model_validator(mode="after")
    def _combinations_make_sense(self) -> "ReinforcementConfig":
        check_rl_combination(self)
        return self


def check_rl_combination(spec: ReinforcementConfig) -> None:
    """Key combinations that mean nothing: one paragraph each, exit 2 (``kitchen validate`` too)."""
    if spec.importance_level == "sequence" and spec.loss_fn == "cispo":
        raise ConfigError("importance_level=sequence is not defined for loss_fn=cispo: CISPO clips each token's own "
                          "importance weight. A sequence-level ratio is GSPO: loss_fn=ppo importance_level=sequence "
                          "(or loss=gspo); keep cispo with importance_level=token.")
    if spec.kl_coef == 0 and (spec.kl_estimator != "k1" or spec.kl_in != "reward"):
        raise ConfigError(f"kl_estimator={spec.kl_estimator} kl_in={spec.kl_in} have no effect with kl_coef=0 (no KL "
                          "term, no reference model): set kl_coef > 0, e.g. kl_coef=0.04, or leave them at k1 / reward.")
    if spec.loss_fn == "importance_sampling" and (spec.clip_low != CLIP_LOW or spec.clip_high != CLIP_HIGH):
        raise ConfigError(f"clip_low={spec.clip_low} / clip_high={spec.clip_high} have no effect with "
                          "loss_fn=importance_sampling, which does not clip: use loss_fn=ppo (or cispo) with them.")
    if spec.group_size < 2 and (spec.dynamic_sampling or spec.advantage == "rloo"):
        what = "dynamic_sampling keeps groups whose rewards differ" if spec.dynamic_sampling else "rloo's baseline is the other samples of the group"
        raise ConfigError(f"group_size={spec.group_size}: {what}, which needs group_size >= 2.")
    if spec.overlong == "soft_punish" and spec.overlong_buffer > spec.max_tokens:
        raise ConfigError(f"overlong_buffer={spec.overlong_buffer} is longer than max_tokens={spec.max_tokens}: the "
                          "soft punishment ramps over the last overlong_buffer of max_tokens; set overlong_buffer <= max_tokens.")


REINFORCEMENT = Workflow(
    name="reinforcement",
    description="GRPO-style RL on an environment: the GRPO family (advantage, aggregation, clips, KL, GSPO, CISPO, DAPO) as keys.",
    config=ReinforcementConfig,
    nodes=(
        stage(OpenSession),
        stage(RLSetup),
        *restore_and_evaluate(rl_evaluators),
        loop("step", over=steps, body=[stage(RLPrompts), stage(Rollout), stage(DynamicSampling), stage(RLStep), *periodic()]),
        *finish(),
    ),
)
