"""The RSFT stages. One step, as the workflow spells it::

    SampleK     this step's prompts (a pure function of seed and step); k completions
                each from the current weights, scored by the env's reward
    KeepBest    per prompt, the best keep_top completions whose reward >= keep_threshold
    SFTOnKept   the kept completions as chat rows -> cross_entropy datums -> StepOutput

Stages share state through dataclasses fetched with ``ctx.use(...)``: kitchen's own
``Rollouts`` (groups of samples) and ``Session`` (renderer), and this package's
``RSFTState`` and ``Kept``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kitchen.api import (
    RUN_INFO,
    RUN_WARNING,
    Context,
    EnvAccuracy,
    Group,
    Rollouts,
    Sample,
    Session,
    Stage,
    StepOutput,
    build,
    build_sft_data,
    env_groups,
    last_user_text,
    require_max_steps,
    resolve,
    sample_lane,
    teacher_samples_to_sft_rows,
)

from rsft_cookbook.sink import KEPT_EVENT


@dataclass
class RSFTState:
    env: Any = None
    eval_problems: list[Any] = field(default_factory=list)


@dataclass
class Kept:
    """KeepBest's own state: this step's kept (group, sample) pairs."""

    samples: list[tuple[Group, Sample]] = field(default_factory=list)


class RSFTSetup(Stage):
    """Build the env (a name or a {_target_: ...} node) and its held-out problems; the run is max_steps steps."""

    def validate(self, ctx: Context) -> None:
        require_max_steps(ctx, "rsft")
        resolve("envs", ctx.spec.env)

    def execute(self, ctx: Context) -> None:
        spec, state = ctx.spec, ctx.use(RSFTState)
        state.env = build("envs", spec.env)
        state.eval_problems = state.env.eval_prompts(spec.eval_max_examples, seed=spec.seed)
        ctx.progress.total_steps = spec.max_steps
        ctx.emit(RUN_INFO, message=f"rsft on env {state.env.name}: {spec.prompts_per_step} prompts x "
                 f"{spec.samples_per_prompt} samples per step, keep the best {spec.keep_top} with reward >= {spec.keep_threshold}")


class SampleK(Stage):
    """Sample samples_per_prompt completions of this step's prompts with the current weights; score each."""

    def execute(self, ctx: Context) -> None:
        ctx.pipeline.drain()  # on-policy: the sampler must see every finished optimizer step
        spec, env, renderer = ctx.spec, ctx.use(RSFTState).env, ctx.use(Session).renderer
        rollouts = ctx.use(Rollouts)
        rollouts.groups = env_groups(ctx, env, spec.prompts_per_step)  # this step's prompts (seed, step)
        # kitchen's helper sends every prompt's sample() before awaiting any (seeds: seed, step, prompt)
        for group, result in sample_lane(ctx, ctx.training.sampling_client(), renderer, list(range(len(rollouts.groups))),
                                         n=spec.samples_per_prompt):
            for seq in result.sequences:
                text = renderer.parse_response(seq.tokens)
                score = env.score(group.problem, text)
                group.samples.append(Sample(list(seq.tokens), list(seq.logprobs), text, float(score.reward), bool(score.correct)))


class KeepBest(Stage):
    """Keep each prompt's best keep_top completions whose reward is at least keep_threshold."""

    def execute(self, ctx: Context) -> None:
        spec, kept = ctx.spec, ctx.use(Kept)
        kept.samples = []
        for group in ctx.use(Rollouts).groups:
            ranked = sorted((s for s in group.samples if s.text.strip()), key=lambda s: s.reward, reverse=True)
            kept.samples += [(group, s) for s in ranked[: spec.keep_top] if s.reward >= spec.keep_threshold]
        for group, s in kept.samples:
            ctx.emit(KEPT_EVENT, step=ctx.step + 1, reward=s.reward, prompt=last_user_text(group.prompt_messages), completion=s.text)


class SFTOnKept(Stage):
    """The kept completions as chat rows -> cross_entropy datums, plus the step's reward metrics."""

    def execute(self, ctx: Context) -> StepOutput:
        renderer, kept, groups = ctx.use(Session).renderer, ctx.use(Kept), ctx.use(Rollouts).groups
        rows = teacher_samples_to_sft_rows((g.prompt_messages, s.text) for g, s in kept.samples)
        datums = build_sft_data(rows, renderer, source="kept samples")[0] if rows else []
        samples = [s for g in groups for s in g.samples]
        rewards = [s.reward for s in samples]
        metrics = {
            "reward_mean": sum(rewards) / max(1, len(rewards)),
            "reward_max": max(rewards, default=0.0),
            "accuracy": sum(s.correct for s in samples) / max(1, len(samples)),
            "kept": float(len(kept.samples)),
        }
        if not datums:  # no datums: the step is counted and logged, the weights do not move
            ctx.emit(RUN_WARNING, message=f"step {ctx.step + 1}: no completion reached keep_threshold={ctx.spec.keep_threshold} "
                     f"(best reward {metrics['reward_max']:g}); this step trains on nothing.")
        return StepOutput(datums, "cross_entropy", None, metrics)


def env_accuracy(ctx: Context) -> list[Any]:
    """The workflow's own evaluator: kitchen's greedy accuracy and mean reward on the env's held-out prompts."""
    state = ctx.use(RSFTState)
    return [EnvAccuracy(state.env, state.eval_problems)] if state.eval_problems else []
