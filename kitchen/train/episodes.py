"""The multi-turn environment protocol: episodes, group builders, trajectories, RL datums.

An episode is a loop (tinker-cookbook's ``rl/types.py``, in facts):

    observation, stop = env.initial_observation()
    repeat:  action = policy(observation, stop)                  # sampled tokens + logprobs
             result = env.step(action.tokens)                     # StepResult
             observation, stop = result.next_observation, result.next_stop_condition
    until result.episode_done, or a turn / token limit

An :class:`EnvGroupBuilder` makes the envs of one group (a GRPO group: the same task
``group_size`` times, or the players of a self-play game) and may add a group reward per
trajectory from all of them (:meth:`EnvGroupBuilder.compute_group_rewards`: pairwise
preference, zero-sum games) on top of the per-step rewards. An :class:`EpisodeSource`
(what ``env=`` builds) gives each step's builders, as a pure function of the seed, so
exact resume rebuilds every env from (seed, step).

Only the policy's own tokens train: a trajectory becomes datums whose observation tokens
have weight 0 and advantage 0 (:func:`trajectory_datums`); a next observation that extends
the previous observation + action is appended to the same datum, one that does not (a
template that rewrites history) starts a new one.

Today's single-turn envs (``initial_prompts`` + ``score``) run through
:class:`SingleTurnSource`, a one-step adapter whose rollouts, datums and metrics are the
ones the single-turn workflow always made (``rl_basic`` is bit-identical).

Pure Python: no torch, no I/O. The rollout loop that drives envs through a
:class:`~kitchen.ports.completer.TokenCompleter` is :mod:`kitchen.stages.rollouts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from kitchen.ports.types import Datum

Observation = list[int]


@dataclass
class StepResult:
    """What ``env.step(action)`` returns.

    ``metrics`` are numbers the rollout averages over episodes into the step's metrics
    (``correct`` is the episode's accuracy when the last step sets it). A done episode's
    ``next_observation`` may be empty. ``error`` says the env itself failed at this step
    (a tool that raised or hung) though it still gave a defined reward: the episode
    counts as failed towards ``max_env_failures``.
    """

    reward: float
    episode_done: bool
    next_observation: Observation = field(default_factory=list)
    next_stop_condition: Sequence[int] | Sequence[str] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@runtime_checkable
class Env(Protocol):
    """One episode's state (made fresh per episode by a group builder; never reused)."""

    def initial_observation(self) -> tuple[Observation, Sequence[int] | Sequence[str]]: ...

    def step(self, action: list[int]) -> StepResult: ...


class EnvGroupBuilder:
    """Makes one group's envs; may reward the group's trajectories jointly.

    ``make_envs(group_size, renderer)`` returns the group's envs (usually ``group_size``
    copies of one task). ``compute_group_rewards`` returns one extra reward per
    trajectory (default 0.0 each), added to the sum of its step rewards.
    """

    #: shown as the prompt of a rollout preview
    preview: str = ""

    def make_envs(self, group_size: int, renderer: Any) -> list[Env]:
        raise NotImplementedError

    def compute_group_rewards(self, trajectories: Sequence["Trajectory"]) -> list[float]:
        return [0.0] * len(trajectories)


@runtime_checkable
class EpisodeSource(Protocol):
    """What a multi-turn ``env=`` plugin is: each step's group builders, deterministic in ``seed``.

    ``name`` appears in messages (a run stops naming the env that kept failing).
    """

    name: str

    def group_builders(self, seed: int, n: int) -> list[EnvGroupBuilder]: ...


@dataclass
class Transition:
    """One turn: the observation the policy saw, its action (tokens + logprobs) and the step result."""

    observation: Observation
    action: list[int]
    logprobs: list[float]
    reward: float = 0.0
    done: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    stop_reason: str = "length"


@dataclass
class Trajectory:
    """A whole episode. ``error`` is why it ended early (an env that raised, a bad action)."""

    transitions: list[Transition] = field(default_factory=list)
    group_reward: float = 0.0
    error: str | None = None
    truncated: bool = False  # ended by max_turns or the token limit, not by the env

    @property
    def turns(self) -> int:
        return len(self.transitions)

    def total_reward(self) -> float:
        """Sum of the step rewards plus the group reward (only when set, so one step's reward is kept as is)."""
        total = 0.0
        for t in self.transitions:
            total += t.reward
        if len(self.transitions) == 1 and not self.group_reward:
            return self.transitions[0].reward
        return total + self.group_reward if self.group_reward else total

    def policy_tokens(self) -> list[int]:
        return [tok for t in self.transitions for tok in t.action]

    def policy_logprobs(self) -> list[float]:
        return [lp for t in self.transitions for lp in t.logprobs]

    def episode_tokens(self) -> int:
        """Tokens of the whole episode as the model saw it: the last observation plus its action."""
        if not self.transitions:
            return 0
        last = self.transitions[-1]
        return len(last.observation) + len(last.action)

    def final_metrics(self) -> dict[str, float]:
        """The metrics of every step, the later step winning on a repeated key (``correct`` is the last step's)."""
        out: dict[str, float] = {}
        for t in self.transitions:
            out.update(t.metrics)
        return out

    def summed_metrics(self) -> dict[str, float]:
        """Each numeric step metric summed over the episode (``tool_calls``: calls per episode)."""
        out: dict[str, float] = {}
        for t in self.transitions:
            for key, value in t.metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[key] = out.get(key, 0.0) + float(value)
        return out


# --------------------------------------------------------------------------- datums


@dataclass
class Segment:
    """One datum's worth of an episode: the token sequence and which tokens the policy sampled."""

    tokens: list[int]
    policy: list[bool]
    logprobs: list[float]


def trajectory_segments(trajectory: Trajectory) -> list[Segment]:
    """Split an episode into token sequences: each next observation that extends the
    sequence so far (observation + action) continues it, with its new tokens as
    observation (untrained); one that does not starts a new segment."""
    segments: list[Segment] = []
    current: Segment | None = None
    for t in trajectory.transitions:
        ob = [int(x) for x in t.observation]
        if current is not None and len(ob) >= len(current.tokens) and ob[: len(current.tokens)] == current.tokens:
            extra = ob[len(current.tokens):]
            current.tokens += extra
            current.policy += [False] * len(extra)
            current.logprobs += [0.0] * len(extra)
        else:
            current = Segment(list(ob), [False] * len(ob), [0.0] * len(ob))
            segments.append(current)
        current.tokens += [int(x) for x in t.action]
        current.policy += [True] * len(t.action)
        current.logprobs += [float(x) for x in t.logprobs]
    return [s for s in segments if any(s.policy)]


def segment_datum(segment: Segment, token_advantages: Sequence[float]) -> Datum:
    """The RL datum of one segment (Tinker layout, as :func:`kitchen.train.rl.build_rl_datum`).

    ``token_advantages`` has one value per *policy* token of the segment, in order;
    observation positions get weight 0, advantage 0 and logprob 0.
    """
    if not segment.tokens or segment.policy[0]:
        raise ValueError("segment_datum: a segment starts with a non-empty observation")
    n_policy = sum(segment.policy)
    if len(token_advantages) != n_policy:
        raise ValueError(f"length mismatch: policy tokens={n_policy}, advantages={len(token_advantages)}")
    adv = iter(float(a) for a in token_advantages)
    advantages, weights, logprobs = [], [], []
    for is_policy, lp in zip(segment.policy[1:], segment.logprobs[1:]):
        if is_policy:
            advantages.append(next(adv))
            weights.append(1.0)
            logprobs.append(lp)
        else:
            advantages.append(0.0)
            weights.append(0.0)
            logprobs.append(0.0)
    return Datum(
        model_input=segment.tokens[:-1],
        loss_fn_inputs={"target_tokens": segment.tokens[1:], "logprobs": logprobs, "advantages": advantages, "weights": weights},
    )


def trajectory_datums(trajectory: Trajectory, token_advantages: Sequence[float]) -> list[Datum]:
    """Datums of a whole episode; ``token_advantages`` has one value per policy token of the episode."""
    out, k = [], 0
    for seg in trajectory_segments(trajectory):
        n = sum(seg.policy)
        out.append(segment_datum(seg, token_advantages[k: k + n]))
        k += n
    if k != len(token_advantages):
        raise ValueError(f"length mismatch: policy tokens={k}, advantages={len(token_advantages)}")
    return out


def reference_positions(trajectory: Trajectory) -> list[tuple[list[int], list[int]]]:
    """Per segment: its full token sequence and the indices of its policy tokens, for
    scoring them with a reference model's ``compute_logprobs`` (entry ``i`` is token ``i``'s logprob)."""
    return [(seg.tokens, [i for i, p in enumerate(seg.policy) if p]) for seg in trajectory_segments(trajectory)]


# --------------------------------------------------------------------------- step metrics


def episode_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """``turns`` (mean turns per episode), ``episode_tokens`` (mean tokens per episode),
    ``episode_errors`` (episodes an env error ended), ``episode_truncated`` (ended by a limit),
    and per episode the mean of each numeric step metric the envs report, summed over its
    steps (``env/KEY``)."""
    n = len(trajectories)
    if not n:
        return {}
    out = {
        "turns": sum(t.turns for t in trajectories) / n,
        "episode_tokens": sum(t.episode_tokens() for t in trajectories) / n,
        "episode_errors": float(sum(1 for t in trajectories if t.error)),
        "episode_truncated": float(sum(1 for t in trajectories if t.truncated)),
    }
    sums: dict[str, float] = {}
    for t in trajectories:
        for key, value in t.summed_metrics().items():
            if key != "correct":
                sums[key] = sums.get(key, 0.0) + value
    out.update((f"env/{k}", v / n) for k, v in sorted(sums.items()))
    return out


# --------------------------------------------------------------------------- the single-turn adapter


class SingleTurnEnv:
    """One problem of a single-turn env as a one-step episode: prompt -> completion -> score."""

    def __init__(self, env: Any, problem: Any, renderer: Any, prompt_tokens: list[int] | None = None) -> None:
        self.env, self.problem, self.renderer = env, problem, renderer
        self.prompt_tokens = prompt_tokens

    def initial_observation(self) -> tuple[Observation, Sequence[int] | Sequence[str]]:
        tokens = self.prompt_tokens if self.prompt_tokens is not None else self.renderer.build_prompt(self.problem.messages)
        return list(tokens), tuple(self.renderer.stop_sequences)

    def step(self, action: list[int]) -> StepResult:
        text = self.renderer.parse_response(action)
        score = self.env.score(self.problem, text)
        return StepResult(float(score.reward), True, metrics={"correct": 1.0 if score.correct else 0.0})


class SingleTurnGroup(EnvGroupBuilder):
    """A group of ``group_size`` one-step episodes of the same problem."""

    def __init__(self, env: Any, problem: Any, prompt_tokens: list[int] | None = None) -> None:
        self.env, self.problem, self.prompt_tokens = env, problem, prompt_tokens
        self.preview = _last_user(getattr(problem, "messages", None))

    def make_envs(self, group_size: int, renderer: Any) -> list[Env]:
        return [SingleTurnEnv(self.env, self.problem, renderer, self.prompt_tokens) for _ in range(group_size)]


class SingleTurnSource:
    """A single-turn env (``initial_prompts`` + ``score``) seen as an :class:`EpisodeSource`."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.name = getattr(env, "name", type(env).__name__)

    def group_builders(self, seed: int, n: int) -> list[EnvGroupBuilder]:
        return [SingleTurnGroup(self.env, p) for p in self.env.initial_prompts(seed, n)]


def is_single_turn(env: Any) -> bool:
    """A single-turn env: it scores completions and has no group builders of its own."""
    return not hasattr(env, "group_builders") and hasattr(env, "initial_prompts") and hasattr(env, "score")


def episode_source(env: Any) -> EpisodeSource:
    """``env`` as an :class:`EpisodeSource` (a single-turn env through :class:`SingleTurnSource`)."""
    if hasattr(env, "group_builders"):
        return env
    if is_single_turn(env):
        return SingleTurnSource(env)
    raise TypeError(f"{type(env).__name__} is neither a multi-turn env (group_builders) nor a single-turn one "
                    "(initial_prompts + score)")


def _last_user(messages: Sequence[Any]) -> str:
    for m in reversed(list(messages or [])):
        if isinstance(m, dict) and m.get("role") == "user":
            return str(m.get("content", ""))
    return ""
