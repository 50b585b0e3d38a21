"""What the policy-gradient workflows (RL, on-policy distillation) share: rollout groups,
the rollout stage that samples them in parallel lanes, the episode loop that drives
multi-turn envs through a token completer, per-(step, group) sampler seeds and the fixed
step plan.

Rollout lanes: a :class:`RolloutStage` runs ``min(rollout_concurrency, groups)`` lanes on
threads, sized from the spec when the stage runs; lane ``i`` owns the groups ``g`` with
``g % lanes == i`` and submits all its groups' ``sample`` calls before it awaits any. Each
group's sampler seed depends only on (seed, step, group), so what a step samples does not
depend on ``rollout_concurrency`` or on thread scheduling.

Episodes (:class:`EpisodeRollout`, the RL rollout): each group's builder makes its envs;
a lane runs all its groups' episodes in lock step, turn by turn, submitting every active
episode's completion before it awaits any. Turn 0 of a group whose envs share one
observation is one ``sample`` call of ``group_size`` with the group's seed (what the
single-turn workflow always sent, so single-turn runs are unchanged); every later call has
its own (seed, step, group, episode, turn) seed. An env that raises ends its episode with
``env_failure_reward`` and an error; ``max_env_failures`` consecutive failed episodes stop
the run with one paragraph naming the env and the last error.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Sequence

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage
from kitchen.errors import ConfigError, KitchenError
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
    trajectory: Any = None  # the episode (kitchen.train.episodes.Trajectory) when an env ran one


@dataclass
class Group:
    """A prompt and its samples (a GRPO group)."""

    prompt_messages: list[dict]
    prompt_tokens: list[int]
    problem: Any = None
    samples: list[Sample] = field(default_factory=list)
    builder: Any = None  # the group's EnvGroupBuilder (episode rollouts)


@dataclass
class Rollouts:
    """This step's groups and the sampler over the current weights (rollout lanes fill ``groups[g].samples``)."""

    groups: list[Group] = field(default_factory=list)
    sampler: Any = None
    turns: int = 0  # env turns this step's rollout ran, and how long it took (turns_per_s)
    seconds: float = 0.0


def env_groups(ctx: Context, env: Any, n: int) -> list[Group]:
    """This step's ``n`` groups from ``env`` (a pure function of seed and step), each with its builder.

    A single-turn env gives its prompts, rendered; a multi-turn one (``group_builders``)
    gives builders, whose envs make their own observations when the rollout runs.
    """
    from kitchen.stages.session import Session
    from kitchen.train.episodes import SingleTurnGroup, is_single_turn

    renderer = ctx.use(Session).renderer
    seed = ctx.spec.seed * 1_000_003 + ctx.step
    if is_single_turn(env):
        groups = []
        for p in env.initial_prompts(seed, n):
            tokens = renderer.build_prompt(p.messages)
            groups.append(Group(p.messages, tokens, problem=p, builder=SingleTurnGroup(env, p, tokens)))
        return groups
    return [Group([{"role": "user", "content": str(getattr(b, "preview", "") or "")}], [], problem=b, builder=b)
            for b in env.group_builders(seed, n)]


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


# --------------------------------------------------------------------------- episodes


def episode_seed(seed: int, step: int, group: int, episode: int, turn: int, salt: int = 0) -> int:
    """The sampler seed of one episode's turn (turn >= 1, or turn 0 of a group whose envs differ)."""
    base = sampling_seed(seed, step, group, salt)
    return (base * 1_000_033 + (int(episode) + 1) * 7_919 + int(turn) * 104_729) % (2**31 - 1)


@dataclass
class EpisodeFailures:
    """Consecutive failed episodes (in group order, so it does not depend on lanes) and the last error."""

    consecutive: int = 0
    last_error: str = ""


class _Episode:
    """One running episode: its env, what it has seen so far and where it stops."""

    def __init__(self, group: int, index: int, env: Any) -> None:
        from kitchen.train.episodes import Trajectory

        self.group, self.index, self.env = group, index, env
        self.trajectory = Trajectory()
        self.observation: list[int] = []
        self.stop: Any = ()
        self.done = False

    def fail(self, error: str) -> None:
        self.trajectory.error = self.trajectory.error or error
        self.done = True


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class EpisodeRollout(RolloutStage):
    """Base of the episode rollouts: run every group's episodes through its env builder.

    A subclass says which env (``source_name``, for messages) and which reference sampler
    (``reference``: None unless the step needs reference logprobs) to use. Each group ends
    with one :class:`Sample` per episode: its policy tokens, logprobs, total reward (step
    rewards + group reward), ``correct`` and the trajectory the datums are built from.
    """

    def reference(self, ctx: Context) -> Any:
        return None

    def env(self, ctx: Context) -> Any:
        """The env this stage runs (a group made without a builder gets a single-turn one over it)."""
        return None

    def source_name(self, ctx: Context) -> str:
        env = self.env(ctx)
        return str(getattr(env, "name", type(env).__name__)) if env is not None else "env"

    def execute(self, ctx: Context) -> None:
        from kitchen.ports.completer import SamplingTokenCompleter

        spec, rollouts = ctx.spec, ctx.use(Rollouts)
        renderer, groups = self.renderer(ctx), rollouts.groups
        completer = SamplingTokenCompleter(self.sampler(ctx), SamplingParams(max_tokens=spec.max_tokens, temperature=spec.temperature))
        reference = self.reference(ctx)
        n = len(groups)
        for group in groups:
            if group.builder is None:
                from kitchen.train.episodes import SingleTurnGroup

                group.builder = SingleTurnGroup(self.env(ctx), group.problem, group.prompt_tokens)
        lanes = lane_count(spec.rollout_concurrency, n)
        turns = [0] * lanes
        started = time.perf_counter()

        def run_lane(lane: int) -> None:
            mine = list(range(lane, n, lanes))
            ran, episodes = run_episodes(ctx, completer, renderer, mine, salt=self.salt)
            turns[lane] = ran
            for g in mine:
                finish_group(groups[g], [ep.trajectory for ep in episodes if ep.group == g], renderer, reference,
                             episode_keys(spec)["env_failure_reward"])

        if lanes == 1:
            run_lane(0)
        else:
            with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="kitchen-rollout") as pool:
                futures = [pool.submit(run_lane, lane) for lane in range(lanes)]
                errors = [f.exception() for f in futures]
            for err in errors:
                if err is not None:
                    raise err
        rollouts.turns, rollouts.seconds = sum(turns), time.perf_counter() - started
        self.count_failures(ctx, groups)

    def count_failures(self, ctx: Context, groups: Sequence[Group]) -> None:
        failures = ctx.use(EpisodeFailures)
        limit = episode_keys(ctx.spec)["max_env_failures"]
        for group in groups:
            for sample in group.samples:
                error = sample.trajectory.error if sample.trajectory is not None else None
                if not error:
                    failures.consecutive = 0
                    continue
                failures.consecutive += 1
                failures.last_error = error
                if failures.consecutive >= limit:
                    raise KitchenError(
                        f"Step {ctx.step + 1}: the env '{self.source_name(ctx)}' failed {failures.consecutive} episodes in a "
                        f"row (max_env_failures={limit}), so the run stops here rather than train on failures; the last "
                        f"error was: {error}. Each failed episode got env_failure_reward and was counted in "
                        "episode_errors; fix the env (or its tool) and resume, or raise max_env_failures.")


def episode_keys(spec: Any) -> dict[str, Any]:
    """The episode limits: ``max_turns``, ``max_env_failures``, ``env_failure_reward`` and the token limit
    (``max_length``), from the spec's episode keys (defaults where a spec has none)."""
    from kitchen.config.spec import EpisodeKeys

    defaults = {k: f.default for k, f in EpisodeKeys.model_fields.items()}
    out = {k: getattr(spec, k, v) for k, v in defaults.items()}
    out["max_episode_tokens"] = int(getattr(spec, "max_length", 0) or 0)
    return out


def run_episodes(ctx: Context, completer: Any, renderer: Any, mine: list[int], salt: int = 0,
                 groups: Sequence[Group] | None = None, group_size: int | None = None) -> tuple[int, list[_Episode]]:
    """Run the episodes of the groups ``mine`` (of ``groups``, default this step's) in lock step;
    returns how many turns ran, and the episodes.

    Every active episode's completion of a turn is submitted before any is awaited. An
    env that raises (making envs, its first observation, a step) fails its episode with
    ``env_failure_reward``; a sampler that raises fails the stage, as a backend failure.
    """
    spec = ctx.spec
    groups = ctx.use(Rollouts).groups if groups is None else groups
    size = spec.group_size if group_size is None else group_size
    limits = episode_keys(spec)
    episodes: list[_Episode] = []
    for g in mine:
        group = groups[g]
        try:
            envs = list(group.builder.make_envs(size, renderer))
        except Exception as exc:  # noqa: BLE001 - an env's failure is a metric and a reward, not a crash
            broken = [_Episode(g, e, None) for e in range(size)]
            for ep in broken:
                ep.fail(f"make_envs: {_describe(exc)}")
            episodes += broken
            continue
        for e, env in enumerate(envs):
            ep = _Episode(g, e, env)
            try:
                ob, stop = env.initial_observation()
                ep.observation, ep.stop = [int(t) for t in ob], tuple(stop or renderer.stop_sequences)
            except Exception as exc:  # noqa: BLE001
                ep.fail(f"initial_observation: {_describe(exc)}")
            episodes.append(ep)
    turn, ran = 0, 0
    while True:
        active = [ep for ep in episodes if not ep.done]
        if not active:
            return ran, episodes
        calls: list[tuple[list[_Episode], Any]] = []
        if turn == 0:
            for g in mine:
                mates = [ep for ep in active if ep.group == g]
                if mates and all(ep.observation == mates[0].observation and ep.stop == mates[0].stop for ep in mates):
                    seed = sampling_seed(spec.seed, ctx.step, g, salt)  # the single-turn workflow's own call
                    calls.append((mates, completer.complete(mates[0].observation, mates[0].stop, num_samples=len(mates), seed=seed)))
                else:
                    calls += [([ep], completer.complete(ep.observation, ep.stop, seed=episode_seed(spec.seed, ctx.step, g, ep.index, 0, salt)))
                              for ep in mates]
        else:
            for ep in active:
                budget = min(spec.max_tokens, limits["max_episode_tokens"] - len(ep.observation)) if limits["max_episode_tokens"] else spec.max_tokens
                calls.append(([ep], completer.complete(ep.observation, ep.stop, max_tokens=budget,
                                                       seed=episode_seed(spec.seed, ctx.step, ep.group, ep.index, turn, salt))))
        for eps, future in calls:
            for ep, out in zip(eps, future.result()):
                advance(ep, out, turn + 1, limits, renderer)
                ran += 1
        turn += 1


def advance(ep: _Episode, out: Any, turns: int, limits: dict[str, Any], renderer: Any) -> None:
    """Record one action and step the env; decide whether the episode goes on."""
    from kitchen.train.episodes import Transition

    t = Transition(list(ep.observation), [int(x) for x in out.tokens], [float(x) for x in out.logprobs], stop_reason=out.stop_reason)
    ep.trajectory.transitions.append(t)
    try:
        result = ep.env.step(list(t.action))
        t.reward, t.done = float(result.reward), bool(result.episode_done)
        t.metrics = dict(result.metrics or {})
        error = getattr(result, "error", None)
        if error:
            ep.trajectory.error = str(error)
    except Exception as exc:  # noqa: BLE001 - an env that raises ends its episode with a defined reward
        t.reward, t.done = float(limits["env_failure_reward"]), True
        ep.fail(f"step: {_describe(exc)}")
        return
    if t.done:
        ep.done = True
        return
    nxt = [int(x) for x in result.next_observation]
    limit = limits["max_episode_tokens"]
    if turns >= limits["max_turns"] or not nxt or (limit and len(nxt) >= limit):
        ep.trajectory.truncated = True
        ep.done = True
        return
    ep.observation, ep.stop = nxt, tuple(result.next_stop_condition or renderer.stop_sequences)


def finish_group(group: Group, trajectories: list[Any], renderer: Any, reference: Any = None,
                 failure_reward: float = 0.0) -> None:
    """The group's samples from its finished episodes: group rewards, totals, and reference logprobs.

    An episode that failed before its first action (make_envs or initial_observation
    raised) has no tokens and the reward ``failure_reward``.

    A builder whose ``compute_group_rewards`` raises fails every episode of its group
    (group reward 0, the error counted like an env's).
    """
    from kitchen.train.episodes import reference_positions

    try:
        extra = [float(r) for r in group.builder.compute_group_rewards(trajectories)] if trajectories else []
        if len(extra) != len(trajectories):
            raise ValueError(f"compute_group_rewards returned {len(extra)} rewards for {len(trajectories)} trajectories")
    except Exception as exc:  # noqa: BLE001
        extra = [0.0] * len(trajectories)
        for traj in trajectories:
            traj.error = traj.error or f"compute_group_rewards: {_describe(exc)}"
    samples = []
    for traj, bonus in zip(trajectories, extra):
        traj.group_reward = bonus
        text = "\n".join(renderer.parse_response(t.action) for t in traj.transitions)
        correct = bool(traj.final_metrics().get("correct", 0.0))
        reward = float(failure_reward) if traj.error and not traj.transitions else traj.total_reward()
        samples.append(Sample(traj.policy_tokens(), traj.policy_logprobs(), text, reward, correct, trajectory=traj))
    if reference is not None:
        jobs = [(s, [(positions, reference.compute_logprobs(tokens)) for tokens, positions in reference_positions(s.trajectory)])
                for s in samples if s.tokens]
        for sample, parts in jobs:
            sample.ref_logprobs = [float(f.result()[i]) for positions, f in parts for i in positions]
    group.samples = samples


def sample_datums(group: Group, sample: Sample, advantage: float, kl_coef: float = 0.0) -> list[Datum]:
    """The RL datums of one sample: its episode's token sequences with the policy's tokens
    trained (observation tokens weight 0), each policy token's advantage ``advantage``
    minus ``kl_coef * (logp - logp_ref)`` when reference logprobs are there."""
    from kitchen.train.episodes import trajectory_datums
    from kitchen.train.rl import build_rl_datum, kl_penalty_advantages

    n = len(sample.tokens)
    token_adv: list[float] = [float(advantage)] * n
    if kl_coef > 0 and sample.ref_logprobs is not None:
        token_adv = kl_penalty_advantages([advantage] * n, sample.logprobs, sample.ref_logprobs, kl_coef)
    if sample.trajectory is None:
        return [build_rl_datum(group.prompt_tokens, sample.tokens, sample.logprobs, token_adv)]
    return trajectory_datums(sample.trajectory, token_adv)


def episode_step_metrics(rollouts: Rollouts) -> dict[str, float]:
    """``turns``, ``episode_tokens`` (means per episode), failures, env metrics and ``turns_per_s`` of this step's rollout."""
    from kitchen.train.episodes import episode_metrics

    trajectories = [s.trajectory for g in rollouts.groups for s in g.samples if s.trajectory is not None]
    out = episode_metrics(trajectories)
    if trajectories and rollouts.seconds > 0:
        out["turns_per_s"] = rollouts.turns / rollouts.seconds
    return out


# --------------------------------------------------------------------------- evaluation


def eval_items(env: Any, n: int, seed: int) -> list[Any]:
    """Held-out items of ``env``: a single-turn env's ``eval_prompts``, a multi-turn one's
    ``eval_group_builders`` (none when it has neither)."""
    if hasattr(env, "eval_prompts"):
        return list(env.eval_prompts(n, seed=seed))
    if hasattr(env, "eval_group_builders"):
        return list(env.eval_group_builders(n, seed=seed))
    return []


class EpisodeEval:
    """Greedy episodes (temperature 0, one per held-out builder) of a multi-turn env:
    ``eval_accuracy``, ``eval_reward`` and ``eval_turns``, and previews of the transcripts."""

    shows_samples = True

    def __init__(self, env: Any, builders: Sequence[Any]) -> None:
        self.env, self.builders = env, list(builders)

    def __call__(self, env: Any) -> Any:
        from kitchen.evaluators import EvalResult, EvalSample
        from kitchen.ports.completer import SamplingTokenCompleter

        builders = self.builders if env.want_metrics else self.builders[: env.previews]
        if not builders:
            return EvalResult()
        completer = SamplingTokenCompleter(env.sampler, SamplingParams(max_tokens=env.spec.max_tokens, temperature=0.0))
        groups = [Group([{"role": "user", "content": str(getattr(b, "preview", ""))}], [], problem=b, builder=b) for b in builders]
        _, episodes = run_episodes(env.ctx, completer, env.renderer, list(range(len(groups))), salt=7, groups=groups, group_size=1)
        for g, group in enumerate(groups):
            finish_group(group, [ep.trajectory for ep in episodes if ep.group == g], env.renderer,
                         failure_reward=episode_keys(env.spec)["env_failure_reward"])
        samples = [(group, s) for group in groups for s in group.samples]
        metrics = {}
        if env.want_metrics and samples:
            metrics = {"eval_accuracy": sum(1.0 for _, s in samples if s.correct) / len(samples),
                       "eval_reward": sum(s.reward for _, s in samples) / len(samples),
                       "eval_turns": sum(s.trajectory.turns for _, s in samples) / len(samples)}
        previews = [EvalSample(str(getattr(g.builder, "preview", "")), s.text, {"reward": s.reward}) for g, s in samples[: env.previews]]
        return EvalResult(metrics, previews)
