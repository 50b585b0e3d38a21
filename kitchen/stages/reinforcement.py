"""Reinforcement-learning stages (GRPO-style).

One RL step, as the workflow spells it::

    RLPrompts       this step's prompts (a pure function of seed and step) and a sampler
                    over the current weights
    Rollout         in rollout_concurrency parallel lanes: sample group_size completions
                    per prompt, score them, and (kl_coef > 0) get the reference model's
                    logprobs
    RLStep          group-centred advantages (+ KL penalty) -> a StepOutput with the RL
                    datums, the loss function and the step's reward metrics

Everything here talks to ports (TrainingClient / SamplingClient) and the pure math in
``kitchen.train.rl``; nothing is backend-specific. Futures are submitted before they are
awaited, so a remote backend has every group of a lane in flight at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kitchen.engine.context import Context
from kitchen.engine.pipeline import StepOutput
from kitchen.engine.stage import Stage
from kitchen.errors import KitchenError
from kitchen.evaluators import EnvAccuracy
from kitchen.ports.types import Datum
from kitchen.stages.rollouts import (
    EpisodeEval,
    EpisodeRollout,
    Group,
    Rollouts,
    env_groups,
    episode_step_metrics,
    eval_items,
    loss_fn_config_for,
    require_max_steps,
    sample_datums,
)
from kitchen.telemetry import events as ev
from kitchen.train.messages import last_user_text


@dataclass
class RLState:
    env: Any = None
    eval_problems: list[Any] = field(default_factory=list)
    reference: Any = None  # sampler over the frozen base model (kl_coef > 0)


class RLSetup(Stage):
    """Build the environment and its held-out prompts; the run is max_steps steps."""

    def validate(self, ctx: Context) -> None:
        from kitchen.config.instantiate import build

        require_max_steps(ctx, "reinforcement")
        build("envs", ctx.spec.env)  # building checks the env's own options (its tools, their names) before a run starts

    def execute(self, ctx: Context) -> None:
        from kitchen.config.instantiate import build

        spec, rl = ctx.spec, ctx.use(RLState)
        rl.env = build("envs", spec.env)
        rl.eval_problems = eval_items(rl.env, spec.eval_max_examples, spec.seed)  # prompts, or a multi-turn env's builders
        ctx.progress.total_steps = spec.max_steps
        ctx.emit(
            ev.RUN_INFO,
            message=f"env {getattr(rl.env, 'name', type(rl.env).__name__)}: {spec.groups_per_batch} prompts x {spec.group_size} samples per step, "
            f"{len(rl.eval_problems)} held-out eval prompts, loss {spec.loss_fn}, kl_coef {spec.kl_coef}",
        )


class RLPrompts(Stage):
    """This step's prompts (deterministic in seed and step) and a sampler over the current weights."""

    def execute(self, ctx: Context) -> None:
        ctx.pipeline.drain()  # on-policy: the sampler must see every finished optimizer step
        spec, rl = ctx.spec, ctx.use(RLState)
        rollouts = ctx.use(Rollouts)
        rollouts.groups = env_groups(ctx, rl.env, spec.groups_per_batch)
        rollouts.sampler = ctx.training.sampling_client()
        if spec.kl_coef > 0 and rl.reference is None:
            rl.reference = ctx.training.sampling_client(base_model=spec.model)


class Rollout(EpisodeRollout):
    """In rollout_concurrency parallel lanes: run group_size episodes per group through the env (one turn for a
    single-turn env: sample, score), then the reference logprobs when kl_coef > 0."""

    def reference(self, ctx: Context) -> Any:
        return ctx.use(RLState).reference if ctx.spec.kl_coef > 0 else None

    def env(self, ctx: Context) -> Any:
        return ctx.use(RLState).env


class RLStep(Stage):
    """Group-centred advantages (minus kl_coef * (logp - logp_ref) per token) -> forward_backward + optim_step."""

    def execute(self, ctx: Context) -> StepOutput:
        from kitchen.train.rl import approx_kl, batch_group_advantages, rl_step_metrics

        spec = ctx.spec
        groups = ctx.use(Rollouts).groups
        rewards = [[s.reward for s in g.samples] for g in groups]
        advantages, _ = batch_group_advantages(rewards)
        datums: list[Datum] = []
        sampled = 0
        for group, advs in zip(groups, advantages):
            for sample, adv in zip(group.samples, advs):
                if not sample.tokens:
                    continue
                sampled += 1
                for datum in sample_datums(group, sample, adv, spec.kl_coef):  # observation tokens weigh 0
                    if any(datum.loss_fn_inputs["advantages"]):
                        datums.append(datum)
        # Every group tied (all right or all wrong): no datums, so the step is counted and
        # logged but the weights and the optimizer state do not move.
        if not sampled:
            raise KitchenError(f"Step {ctx.step + 1}: every rollout came back empty (0 sampled tokens); check max_tokens and the stop sequences.")
        samples = [s for g in groups for s in g.samples]
        metrics = rl_step_metrics(rewards, [[s.correct for s in g.samples] for g in groups],
                                  [len(s.tokens) for s in samples], [s.logprobs for s in samples], None)
        with_ref = [s for s in samples if s.ref_logprobs is not None] if spec.kl_coef > 0 else []
        if with_ref:
            metrics["kl_ref"] = approx_kl([x for s in with_ref for x in s.logprobs], [x for s in with_ref for x in s.ref_logprobs])  # type: ignore[union-attr]
        metrics["num_datums"] = float(len(datums))
        metrics.update(episode_step_metrics(ctx.use(Rollouts)))  # turns, episode_tokens, turns_per_s, env/...
        first = ("reward_mean", "accuracy", "entropy", "kl_ref", "sampled_tokens")  # the console shows the first few
        ordered = {k: metrics[k] for k in first if k in metrics}
        ordered.update((k, v) for k, v in metrics.items() if k not in ordered)
        emit_rollouts(ctx, groups, with_reward=True)
        return StepOutput(datums, spec.loss_fn, loss_fn_config_for(spec.loss_fn), ordered)


def emit_rollouts(ctx: Context, groups: list[Group], with_reward: bool = False) -> None:
    """The first sample of the first few groups, as sample.completion events tagged 'rollout'."""
    for group in groups[: ctx.spec.num_preview_samples]:
        if group.samples:
            s = group.samples[0]
            extra = {"reward": s.reward} if with_reward else {}
            ctx.emit(ev.SAMPLE, tag="rollout", step=ctx.step + 1, prompt=last_user_text(group.prompt_messages), completion=s.text, **extra)


def rl_evaluators(ctx: Context) -> list[Any]:
    rl = ctx.use(RLState)
    if not rl.eval_problems:
        return []
    return [EnvAccuracy(rl.env, rl.eval_problems) if hasattr(rl.env, "eval_prompts") else EpisodeEval(rl.env, rl.eval_problems)]
