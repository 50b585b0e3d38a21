"""What the policy-gradient workflows (RL, on-policy distillation) share: rollout groups,
parallel rollout lanes, per-(step, group) sampler seeds and the fixed step plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from kitchen.engine.context import Context
from kitchen.engine.ir import ParallelNode, parallel, stage
from kitchen.errors import ConfigError
from kitchen.ports.types import Datum, SamplingParams

ROLLOUT_LANES = 4  # parallel branches in the tree; rollout_concurrency (<= this) of them are busy


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
    """This step's groups and the sampler over the current weights (lanes fill ``groups[g].samples``)."""

    groups: list[Group] = field(default_factory=list)
    sampler: Any = None


def env_groups(ctx: Context, env: Any, n: int) -> list[Group]:
    """This step's ``n`` prompts from ``env`` (a pure function of seed and step), rendered as groups."""
    from kitchen.stages.session import Session

    renderer = ctx.use(Session).renderer
    problems = env.initial_prompts(ctx.spec.seed * 1_000_003 + ctx.step, n)
    return [Group(p.messages, renderer.build_prompt(p.messages), problem=p) for p in problems]


def lanes(stage_cls: type, label: str, n: int = ROLLOUT_LANES) -> ParallelNode:
    """``n`` rollout lanes in a ``parallel`` node; lane i owns the groups g with g % lanes == i."""
    return parallel(
        *[[stage(stage_cls, label=f"{label} (lane {i + 1}/{n})", lane=i, lanes=n)] for i in range(n)],
        max_concurrency=n,
        label=f"{label}s",
    )


def lane_indices(ctx: Context, lane: int, lanes: int, n: int) -> list[int]:
    """The items a lane owns: ``g % lanes == lane``, with at most ``rollout_concurrency`` lanes busy."""
    busy = max(1, min(lanes, ctx.spec.rollout_concurrency))
    if lane >= busy:
        return []
    return [g for g in range(n) if g % busy == lane]


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
