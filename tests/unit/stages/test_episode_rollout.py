"""Episode rollouts: a scripted policy calling the calculator, tool timeouts and bad calls as
metrics and rewards, failing envs stopping the run, lanes that do not change what is sampled,
and the Completer port over a sampling client."""

from __future__ import annotations

import re
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kitchen.adapters.noop.training import NoopSamplingClient
from kitchen.engine.context import Context
from kitchen.envs.calculator import CalculatorEnv
from kitchen.errors import KitchenError
from kitchen.ports.completer import SamplingMessageCompleter, SamplingTokenCompleter
from kitchen.ports.types import SampledSequence, SampleResult, SamplingParams
from kitchen.stages.reinforcement import RLState, Rollout
from kitchen.stages.rollouts import Rollouts, env_groups, episode_step_metrics, sample_datums
from kitchen.stages.session import Session
from kitchen.telemetry.events import EventBus


@pytest.fixture(scope="module")
def renderer():
    from kitchen.adapters.local.tiny import build_tiny_tokenizer
    from kitchen.train.renderers import ChatTemplateRenderer

    return ChatTemplateRenderer(build_tiny_tokenizer(), max_length=None)


class ScriptedPolicy:
    """Calls the calculator on the question, then answers with the tool's result (or misbehaves)."""

    def __init__(self, tokenizer: Any, mode: str = "good") -> None:
        self.tok, self.mode = tokenizer, mode
        self.calls: list[tuple[int, int | None]] = []

    def sample(self, prompt: list[int], num_samples: int, params: SamplingParams):
        self.calls.append((num_samples, params.seed))
        text = self.tok.decode(prompt)
        results = re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", text)
        if results:
            reply = results[-1]
        elif self.mode == "bad":
            reply = "<tool_call>{not json"
        else:
            a, op, b = re.findall(r"What is (\d+) ([+\-*]) (\d+)\?", text)[-1]
            reply = '<tool_call>{"name": "calculator", "arguments": {"expression": "%s %s %s"}}</tool_call>' % (a, op, b)
        tokens = list(self.tok.encode(reply, add_special_tokens=False)) + [2]  # <|im_end|>
        f: Future = Future()
        f.set_result(SampleResult([SampledSequence(tokens, [-0.5] * len(tokens), "stop") for _ in range(num_samples)]))
        return f

    def compute_logprobs(self, tokens: list[int]):
        return NoopSamplingClient().compute_logprobs(tokens)


def make_ctx(renderer: Any, env: Any, sampler: Any, concurrency: int = 2, groups: int = 3, **keys: Any) -> Context:
    spec = SimpleNamespace(rollout_concurrency=concurrency, group_size=2, seed=7, max_tokens=64, temperature=1.0,
                           kl_coef=0.0, max_turns=4, max_env_failures=8, env_failure_reward=0.0, max_length=4096)
    for k, v in keys.items():
        setattr(spec, k, v)
    ctx = Context(spec=spec, adapters=None, bus=EventBus(), run_dir=Path("."))
    ctx.progress.step = 1
    ctx.use(Session).renderer = renderer
    ctx.use(RLState).env = env
    rollouts = ctx.use(Rollouts)
    rollouts.groups = env_groups(ctx, env, groups)
    rollouts.sampler = sampler
    return ctx


def test_a_policy_that_calls_the_calculator_gets_the_reward_and_trains_only_its_own_tokens(renderer) -> None:
    ctx = make_ctx(renderer, CalculatorEnv(), ScriptedPolicy(renderer.tokenizer))
    Rollout().execute(ctx)
    groups = ctx.use(Rollouts).groups
    samples = [s for g in groups for s in g.samples]
    assert len(samples) == 6 and all(s.reward == 1.0 and s.correct for s in samples)
    assert all(s.trajectory.turns == 2 and s.trajectory.error is None for s in samples)
    m = episode_step_metrics(ctx.use(Rollouts))
    assert m["turns"] == 2.0 and m["env/tool_calls"] == 1.0 and m["episode_errors"] == 0.0 and m["turns_per_s"] > 0
    (datum,) = sample_datums(groups[0], samples[0], 0.5)
    weights, targets = datum.loss_fn_inputs["weights"], datum.loss_fn_inputs["target_tokens"]
    trained = renderer.tokenizer.decode([t for t, w in zip(targets, weights) if w])
    untrained = renderer.tokenizer.decode([t for t, w in zip(targets, weights) if not w])
    assert trained.startswith("<tool_call>") and "<|im_start|>tool" not in trained  # the tool result weighs 0
    assert "<|im_start|>tool\n" in untrained and sum(weights) == len(samples[0].tokens)


def test_a_tool_that_hangs_is_a_timeout_metric_and_a_failure_count(renderer) -> None:
    env = CalculatorEnv(tools=[{"_target_": "episode_envs.slow_calculator", "timeout_s": 0.05, "name": "calculator"}])
    ctx = make_ctx(renderer, env, ScriptedPolicy(renderer.tokenizer), groups=2)
    Rollout().execute(ctx)
    samples = [s for g in ctx.use(Rollouts).groups for s in g.samples]
    assert all("timed out" in s.trajectory.error for s in samples)
    assert all(s.reward == 0.0 for s in samples)  # the model read "error: ... timed out" and answered that
    assert episode_step_metrics(ctx.use(Rollouts))["env/tool_timeouts"] == 1.0
    ctx = make_ctx(renderer, env, ScriptedPolicy(renderer.tokenizer), groups=2, max_env_failures=3)
    with pytest.raises(KitchenError, match=r"env 'calculator' failed 3 episodes in a row .* timed out"):
        Rollout().execute(ctx)


def test_an_unparseable_tool_call_gets_the_invalid_call_reward(renderer) -> None:
    ctx = make_ctx(renderer, CalculatorEnv(invalid_call_reward=-0.25), ScriptedPolicy(renderer.tokenizer, mode="bad"))
    Rollout().execute(ctx)
    samples = [s for g in ctx.use(Rollouts).groups for s in g.samples]
    assert all(s.reward == -0.25 and s.trajectory.turns == 1 and s.trajectory.error is None for s in samples)
    assert episode_step_metrics(ctx.use(Rollouts))["env/tool_parse_errors"] == 1.0


def test_an_env_that_raises_gets_the_failure_reward_not_a_crash(renderer) -> None:
    class Broken(CalculatorEnv):
        def group_builders(self, seed: int, n: int):
            builders = super().group_builders(seed, n)
            builders[0].make_envs = lambda group_size, renderer: 1 / 0
            return builders

    ctx = make_ctx(renderer, Broken(), ScriptedPolicy(renderer.tokenizer), env_failure_reward=-1.0)
    Rollout().execute(ctx)
    first, *rest = ctx.use(Rollouts).groups
    assert all(s.reward == -1.0 and not s.tokens and "ZeroDivisionError" in s.trajectory.error for s in first.samples)
    assert all(s.reward == 1.0 for g in rest for s in g.samples)


def test_episodes_do_not_depend_on_rollout_concurrency(renderer) -> None:
    def run(concurrency: int) -> list:
        policy = ScriptedPolicy(renderer.tokenizer)
        ctx = make_ctx(renderer, CalculatorEnv(), policy, concurrency=concurrency, groups=5)
        Rollout().execute(ctx)
        return [[(s.tokens, s.logprobs, s.reward) for s in g.samples] for g in ctx.use(Rollouts).groups], sorted(policy.calls)

    expected = run(1)
    assert run(4) == expected
    calls = expected[1]
    assert sum(1 for n, _ in calls if n == 2) == 5  # turn 0: one call of group_size per group (the single-turn call)
    assert len({seed for n, seed in calls if n == 1}) == 10  # later turns: a seed per (group, episode, turn)


def test_the_completer_port_over_a_sampling_client(renderer) -> None:
    noop = NoopSamplingClient(seed=3)
    completer = SamplingTokenCompleter(noop, SamplingParams(max_tokens=5, temperature=1.0))
    outs = completer.complete([1, 2, 3], (2,), num_samples=3, seed=11).result()
    direct = noop.sample([1, 2, 3], 3, SamplingParams(max_tokens=5, temperature=1.0, stop=(2,), seed=11)).result()
    assert [(o.tokens, o.logprobs, o.stop_reason) for o in outs] == [(s.tokens, s.logprobs, s.stop_reason) for s in direct.sequences]
    messages = SamplingMessageCompleter(SamplingTokenCompleter(ScriptedPolicy(renderer.tokenizer)), renderer,
                                        tools=[CalculatorEnv().tools["calculator"].schema])
    reply = messages.complete([{"role": "user", "content": "What is 12 * 3?"}]).result()
    assert reply["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "12 * 3"}}
