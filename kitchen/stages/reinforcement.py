"""Reinforcement-learning stages (GRPO-style).

One RL step, as the workflow spells it::

    RLPrompts       this step's prompts (a pure function of seed and step) and a sampler
                    over the current weights
    Rollout         in rollout_concurrency parallel lanes: sample group_size completions
                    per prompt, score them, and (kl_coef > 0) get the reference model's
                    logprobs
    DynamicSampling dynamic_sampling=true: drop tied groups, refill with new prompts
    RLStep          advantages (advantage=, + KL penalty when kl_in=reward), scaled by the
                    aggregation -> a StepOutput with the RL datums, the loss function and the
                    step's reward metrics; loss_fn=cispo, importance_level=sequence and
                    kl_in=loss run one forward first and hand the exact gradient over as
                    cross_entropy weights (kitchen.train.grpo)

Everything here talks to ports (TrainingClient / SamplingClient) and the pure math in
``kitchen.train.rl``; nothing is backend-specific. Futures are submitted before they are
awaited, so a remote backend has every group of a lane in flight at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    Sample,
    env_groups,
    episode_step_metrics,
    eval_items,
    require_max_steps,
    sample_datums,
)
from kitchen.telemetry import events as ev
from kitchen.train.messages import last_user_text

if TYPE_CHECKING:  # typed keys of the workflow's config (advantage, aggregation...), no import at run time
    from kitchen.workflows.reinforcement import ReinforcementConfig


@dataclass
class RLState:
    env: Any = None
    eval_problems: list[Any] = field(default_factory=list)
    reference: Any = None  # sampler over the frozen base model (kl_coef > 0)
    sampled_groups: list[Any] = field(default_factory=list)  # this step's own prompts (before dynamic sampling)
    refill_rounds: int = 0  # dynamic sampling's extra rounds this step


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
        rl.sampled_groups = []
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


def _tied(group: Group) -> bool:
    from kitchen.train.rl import is_degenerate_group

    return is_degenerate_group([s.reward for s in group.samples])


class _RefillEnv:
    """The env with its prompt stream moved to refill round ``k`` (a stream no step's own prompts use)."""

    def __init__(self, env: Any, k: int) -> None:
        self._env, self._k = env, k

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._env, name)
        if name in ("initial_prompts", "group_builders"):
            return lambda seed, n, *args, **kwargs: value(seed + self._k * 1_000_000_007, n, *args, **kwargs)
        return value


class DynamicSampling(Stage):
    """DAPO's dynamic sampling (dynamic_sampling=true): drop groups whose rewards all tie, sample new
    prompts until groups_per_batch groups remain (at most dynamic_sampling_max_rounds extra rounds).
    Round k's prompts and sampler seeds are functions of (seed, step, k) alone, so resume stays exact."""

    def execute(self, ctx: Context[ReinforcementConfig]) -> None:
        spec, rl, rollouts = ctx.spec, ctx.use(RLState), ctx.use(Rollouts)
        rl.sampled_groups, rl.refill_rounds = list(rollouts.groups), 0
        if not spec.dynamic_sampling:
            return
        kept = [g for g in rollouts.groups if not _tied(g)]
        while len(kept) < spec.groups_per_batch and rl.refill_rounds < spec.dynamic_sampling_max_rounds:
            rl.refill_rounds += 1
            rollouts.groups = env_groups(ctx, _RefillEnv(rl.env, rl.refill_rounds), spec.groups_per_batch)
            refill = Rollout()
            refill.salt = 7919 * rl.refill_rounds
            refill.execute(ctx)
            kept.extend(g for g in rollouts.groups if not _tied(g))
        rollouts.groups = kept[: spec.groups_per_batch]


def _truncated(sample: Sample) -> bool:
    """A turn of the sample stopped at max_tokens, not at a stop sequence (DAPO's overlong)."""
    traj = sample.trajectory
    return bool(traj is not None and any(t.stop_reason == "length" for t in traj.transitions))


def _response_length(sample: Sample) -> int:
    """The longest turn's tokens (each turn is capped at max_tokens); a single turn's length."""
    traj = sample.trajectory
    if traj is None or not traj.transitions:
        return len(sample.tokens)
    return max(len(t.action) for t in traj.transitions)


def uses_custom_objective(spec: ReinforcementConfig) -> bool:
    """True when the loss needs the policy's logprobs at the current weights (one forward, then the
    exact gradient as cross_entropy weights): cispo, GSPO's sequence ratio, the KL in the loss."""
    return (spec.loss_fn == "cispo" or spec.importance_level == "sequence"
            or (spec.kl_coef > 0 and spec.kl_in == "loss"))


def _is_default_shape(spec: ReinforcementConfig, scale: float) -> bool:
    """The advantages are today's (k1 KL folded into the reward, a token-sum): sample_datums as it is."""
    return scale == 1.0 and spec.kl_estimator == "k1" and spec.kl_in == "reward"


class RLStep(Stage):
    """forward_backward + optim_step on the group advantages (importance_sampling | ppo | cispo).

    Advantages come from ``advantage=`` (minus kl_coef x KL per token when kl_in=reward), scaled
    by the aggregation, and ride the backend's importance_sampling / ppo loss; cispo,
    importance_level=sequence and kl_in=loss take one forward first and train the exact
    gradient as cross_entropy weights (what forward_backward_custom does)."""

    def execute(self, ctx: Context[ReinforcementConfig]) -> StepOutput:
        from kitchen.train.grpo import advantages as estimate
        from kitchen.train.grpo import aggregation_scales, kl_reward_advantages, overlong_penalty
        from kitchen.train.rl import approx_kl, ppo_loss_fn_config, rl_step_metrics

        spec, rl = ctx.spec, ctx.use(RLState)
        groups = ctx.use(Rollouts).groups
        overlong = spec.overlong
        rewards = [[s.reward for s in g.samples] for g in groups]
        penalties: list[list[float]] = []
        if overlong == "soft_punish":
            penalties = [[overlong_penalty(_response_length(s), spec.max_tokens, spec.overlong_buffer, spec.overlong_penalty)
                          for s in g.samples] for g in groups]
            rewards = [[r + p for r, p in zip(rs, ps)] for rs, ps in zip(rewards, penalties)]
        advantages = estimate(rewards, spec.advantage, [[len(s.tokens) for s in g.samples] for g in groups])
        sampled_groups = rl.sampled_groups or groups  # this step's own prompts, before dynamic sampling
        if not any(s.tokens for g in sampled_groups for s in g.samples):
            raise KitchenError(f"Step {ctx.step + 1}: every rollout came back empty (0 sampled tokens); check max_tokens and the stop sequences.")
        trainable = [(g, s, a) for g, advs in zip(groups, advantages) for s, a in zip(g.samples, advs)
                     if s.tokens and not (overlong == "filter" and _truncated(s))]
        scales = aggregation_scales([len(s.tokens) for _, s, _ in trainable], spec.aggregation)
        custom = uses_custom_objective(spec)
        kl_in_reward = spec.kl_coef > 0 and spec.kl_in == "reward"
        datums: list[Datum] = []
        rows: list[tuple[Sample, list[Datum], float]] = []
        for (group, sample, adv), scale in zip(trainable, scales):
            if not custom and _is_default_shape(spec, scale):
                sample_out = sample_datums(group, sample, adv, spec.kl_coef)  # observation tokens weigh 0
            else:
                token_adv = [float(adv)] * len(sample.tokens)
                if kl_in_reward and sample.ref_logprobs is not None:
                    token_adv = kl_reward_advantages(token_adv, sample.logprobs, sample.ref_logprobs, spec.kl_coef, spec.kl_estimator)
                if not custom and scale != 1.0:
                    token_adv = [scale * a for a in token_adv]  # the loss is positively homogeneous in A
                sample_out = token_datums(group, sample, token_adv)
            if custom:
                rows.append((sample, sample_out, scale))
                continue
            # Every group tied (all right or all wrong) leaves no datums: the step is counted and
            # logged but the weights and the optimizer state do not move.
            datums.extend(d for d in sample_out if any(d.loss_fn_inputs["advantages"]))
        samples = [s for g in sampled_groups for s in g.samples]
        metrics = rl_step_metrics([[s.reward for s in g.samples] for g in sampled_groups],
                                  [[s.correct for s in g.samples] for g in sampled_groups],
                                  [len(s.tokens) for s in samples], [s.logprobs for s in samples], None)
        with_ref = [s for s in samples if s.ref_logprobs is not None] if spec.kl_coef > 0 else []
        if with_ref:
            metrics["kl_ref"] = approx_kl([x for s in with_ref for x in s.logprobs], [x for s in with_ref for x in s.ref_logprobs])  # type: ignore[union-attr]
        if spec.dynamic_sampling:
            metrics["dynamic_sampling_rounds"] = float(rl.refill_rounds)
            metrics["groups_trained"] = float(len(groups))
        if overlong == "filter":
            metrics["overlong_filtered"] = float(sum(1 for g in groups for s in g.samples if s.tokens and _truncated(s)))
        elif overlong == "soft_punish":
            flat = [p for ps in penalties for p in ps]
            metrics["overlong_penalty_mean"] = sum(flat) / len(flat) if flat else 0.0
        loss_fn, config, loss, drop = spec.loss_fn, None, None, ()
        if custom:
            datums, loss, extra = custom_objective(ctx, rows)
            metrics.update(extra)
            loss_fn, drop = "cross_entropy", SURROGATE_METRICS
        elif spec.loss_fn == "ppo":
            config = ppo_loss_fn_config(spec.clip_low, spec.clip_high)
        metrics["num_datums"] = float(len(datums))
        metrics.update(episode_step_metrics(ctx.use(Rollouts)))  # turns, episode_tokens, turns_per_s, env/...
        first = ("reward_mean", "accuracy", "entropy", "kl_ref", "sampled_tokens")  # the console shows the first few
        ordered = {k: metrics[k] for k in first if k in metrics}
        ordered.update((k, v) for k, v in metrics.items() if k not in ordered)
        emit_rollouts(ctx, groups, with_reward=True)
        return StepOutput(datums, loss_fn, config, ordered, loss=loss, drop_metrics=drop)


# The cross_entropy surrogate's own numbers (its value is not the objective's).
SURROGATE_METRICS = ("loss:sum", "loss:mean", "num_tokens")


def token_datums(group: Group, sample: Sample, token_advantages: list[float]) -> list[Datum]:
    """The sample's RL datums with one advantage per policy token (observation tokens weigh 0)."""
    from kitchen.train.episodes import trajectory_datums
    from kitchen.train.rl import build_rl_datum

    if sample.trajectory is None:
        return [build_rl_datum(group.prompt_tokens, sample.tokens, sample.logprobs, token_advantages)]
    return trajectory_datums(sample.trajectory, token_advantages)


def custom_objective(ctx: Context, rows: list[tuple[Sample, list[Datum], float]]) -> tuple[list[Datum], float, dict[str, float]]:
    """One ``forward`` at the current weights, :func:`kitchen.train.grpo.policy_objective` on its
    logprobs (a sample, all its turns, is one sequence), and cross_entropy datums whose weights
    ``-dL/dlogp`` carry exactly that gradient: what Tinker's forward_backward_custom does."""
    from kitchen.train.grpo import ObjectiveConfig, SequenceInputs, policy_objective

    spec = ctx.spec
    kl_in_loss = spec.kl_coef > 0 and spec.kl_in == "loss"
    keep = [r for r in rows if kl_in_loss or any(a for d in r[1] for a in d.loss_fn_inputs["advantages"])]
    if not keep:
        return [], 0.0, {}
    flat = [d for _, ds, _ in keep for d in ds]
    current = iter(ctx.training.forward(flat).result().logprobs)
    seqs, where = [], []
    for sample, ds, scale in keep:
        lp, slp, adv, spots = [], [], [], []
        for d in ds:
            cur = next(current)
            inputs = d.loss_fn_inputs
            idx = [i for i, w in enumerate(inputs["weights"]) if w]
            lp += [float(cur[i]) for i in idx]
            slp += [float(inputs["logprobs"][i]) for i in idx]
            adv += [float(inputs["advantages"][i]) for i in idx]
            spots.append(idx)
        ref = sample.ref_logprobs if kl_in_loss and sample.ref_logprobs is not None and len(sample.ref_logprobs) == len(lp) else None
        seqs.append(SequenceInputs(lp, slp, adv, scale, ref))
        where.append(spots)
    cfg = ObjectiveConfig(spec.loss_fn, spec.importance_level, spec.clip_low, spec.clip_high,
                          spec.kl_coef if kl_in_loss else 0.0, spec.kl_estimator)
    result = policy_objective(seqs, cfg)
    datums = []
    for (_, ds, _), spots, grads in zip(keep, where, result.grads):
        k = 0
        for d, idx in zip(ds, spots):
            weights = [0.0] * len(d.model_input)
            for i in idx:
                weights[i] = -grads[k]
                k += 1
            datums.append(Datum(d.model_input, {"target_tokens": d.loss_fn_inputs["target_tokens"], "weights": weights}))
    return datums, result.loss, result.metrics


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
