"""What the policy-gradient workflows (RL, on-policy distillation) share: rollout groups,
the rollout stage that samples them in parallel lanes, per-(step, group) sampler seeds and
the fixed step plan.

Rollout lanes: a :class:`RolloutStage` runs ``min(rollout_concurrency, groups)`` lanes on
threads, sized from the spec when the stage runs; lane ``i`` owns the groups ``g`` with
``g % lanes == i`` and submits all its groups' ``sample`` calls before it awaits any. Each
group's sampler seed depends only on (seed, step, group), so what a step samples does not
depend on ``rollout_concurrency`` or on thread scheduling.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage
from kitchen.errors import ConfigError
from kitchen.ports.types import Datum, SampleResult, SamplingParams


@dataclass
class Sample:
    """One sampled completion of a prompt."""

    tokens: list[int]
    logprobs: list[float]  # the sampler's logprob of each sampled token
    text: str
    reward: float = 0.0
    correct: bool = False
    ref_logprobs: list[float] | None = None  # reference (RL) or teacher (distillation) logprobs


@dataclass
class Group:
    """A prompt and its samples (a GRPO group)."""

    prompt_messages: list[dict]
    prompt_tokens: list[int]
    problem: Any = None
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Rollouts:
    """This step's groups and the sampler over the current weights (rollout lanes fill ``groups[g].samples``)."""

    groups: list[Group] = field(default_factory=list)
    sampler: Any = None


def env_groups(ctx: Context, env: Any, n: int) -> list[Group]:
    """This step's ``n`` prompts from ``env`` (a pure function of seed and step), rendered as groups."""
    from kitchen.stages.session import Session

    renderer = ctx.use(Session).renderer
    problems = env.initial_prompts(ctx.spec.seed * 1_000_003 + ctx.step, n)
    return [Group(p.messages, renderer.build_prompt(p.messages), problem=p) for p in problems]


def lane_count(concurrency: int, n: int) -> int:
    """How many rollout lanes sample ``n`` groups: ``rollout_concurrency``, at most one per group."""
    return max(1, min(int(concurrency), n))


class RolloutStage(Stage):
    """Base of the rollout stages: fill every group's samples in ``rollout_concurrency`` parallel lanes.

    A subclass says which sampler and renderer to use and what to do with one group's
    :class:`~kitchen.ports.types.SampleResult` (``rollout``); ``salt`` separates its
    sampler seeds from another stage's. ``rollout`` runs on the lane's thread, once per
    group, and may only write that group.
    """

    salt: ClassVar[int] = 0

    def sampler(self, ctx: Context) -> Any:
        """The sampling client this stage samples from (default: this step's ``Rollouts.sampler``)."""
        return ctx.use(Rollouts).sampler

    def renderer(self, ctx: Context) -> Any:
        """The renderer that builds stop sequences and parses completions (default: the session's)."""
        from kitchen.stages.session import Session

        return ctx.use(Session).renderer

    def rollout(self, ctx: Context, group: Group, result: SampleResult) -> None:
        raise NotImplementedError

    def execute(self, ctx: Context) -> None:
        sampler, renderer = self.sampler(ctx), self.renderer(ctx)
        n = len(ctx.use(Rollouts).groups)
        lanes = lane_count(ctx.spec.rollout_concurrency, n)

        def run_lane(lane: int) -> None:
            for group, result in sample_lane(ctx, sampler, renderer, list(range(lane, n, lanes)), salt=self.salt):
                self.rollout(ctx, group, result)

        if lanes == 1:
            run_lane(0)
            return
        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="kitchen-rollout") as pool:
            futures = [pool.submit(run_lane, lane) for lane in range(lanes)]
            errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err


def sample_lane(ctx: Context, sampler: Any, renderer: Any, mine: list[int], salt: int = 0,
                n: int | None = None) -> Iterator[tuple[Group, Any]]:
    """Sample ``n`` (default ``group_size``) completions for each owned group, all submitted
    before any is awaited. Reads max_tokens, temperature and seed from the spec."""
    spec, groups = ctx.spec, ctx.use(Rollouts).groups
    futures = [sampler.sample(groups[g].prompt_tokens, n or spec.group_size,
                              sample_params(spec, renderer, sampling_seed(spec.seed, ctx.step, g, salt))) for g in mine]
    for g, future in zip(mine, futures):
        yield groups[g], future.result()


def score_tokens(scorer: Any, group: Group, samples: list[Sample]) -> None:
    """Set each non-empty sample's ``ref_logprobs``: the scorer's logprobs of its tokens after the prompt."""
    from kitchen.train.rl import completion_logprobs

    scored = [s for s in samples if s.tokens]
    futures = [scorer.compute_logprobs(group.prompt_tokens + s.tokens) for s in scored]
    for s, f in zip(scored, futures):
        s.ref_logprobs = completion_logprobs(f.result(), len(group.prompt_tokens))


def steps(ctx: Context) -> Iterator[int]:
    """The optimizer steps still to run (0-based), from the restored step on."""
    return iter(range(ctx.step, ctx.progress.total_steps or 0))


def require_max_steps(ctx: Context, workflow: str) -> None:
    if not ctx.spec.max_steps:
        raise ConfigError(
            f"The {workflow} workflow needs max_steps (it has no dataset epochs to count): pass max_steps=N, e.g. max_steps=20."
        )


def sampling_seed(seed: int, step: int, index: int, salt: int = 0) -> int:
    """A per-(step, group) sampler seed: reproducible, independent of thread scheduling."""
    return (int(seed) * 1_000_003 + int(step) * 10_007 + int(index) * 101 + salt) % (2**31 - 1)


def sample_params(spec: Any, renderer: Any, seed: int | None) -> SamplingParams:
    return SamplingParams(max_tokens=spec.max_tokens, temperature=spec.temperature, stop=tuple(renderer.stop_sequences), seed=seed)


def full_sequence(datum: Datum) -> list[int]:
    """``model_input + [last target]``: the token sequence a datum was shifted from."""
    return list(datum.model_input) + [datum.loss_fn_inputs["target_tokens"][-1]]


def loss_fn_config_for(loss_fn: str) -> dict[str, float] | None:
    if loss_fn == "ppo":
        from kitchen.train.rl import ppo_loss_fn_config

        return ppo_loss_fn_config()  # Tinker's ratio bounds 0.8 / 1.2 (what kitchen.train.losses expects)
    return None
