"""Rollout lanes: rollout_concurrency lanes at any value, and samples that do not depend on it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import assert_completed, run_kitchen, steps_of
from kitchen.adapters.noop.training import NoopSamplingClient
from kitchen.engine.context import Context
from kitchen.stages.distillation import DistillState, StudentRollout, TeacherRollout
from kitchen.stages.reinforcement import RLState, Rollout
from kitchen.stages.rollouts import Group, Rollouts, lane_count
from kitchen.stages.session import Session
from kitchen.telemetry.events import EventBus


class Renderer:
    stop_sequences = ("\n",)

    def parse_response(self, tokens: list[int]) -> str:
        return bytes(t for t in tokens if t < 256).decode(errors="replace")


@dataclass
class Score:
    reward: float
    correct: bool


class Env:
    def score(self, problem: Any, text: str) -> Score:
        return Score(float(len(text) % 3), len(text) % 3 == 0)


class CountingSampler:
    """Noop samples (a pure function of the seed), counting how many ``sample`` calls are in flight.

    ``sample`` is synchronous, like the local backend's. With ``meet`` > 1 each call waits
    until ``meet`` calls are inside it at once (a barrier that fails after a few seconds),
    so a test passes only if that many really sample at the same time.
    """

    def __init__(self, meet: int = 1) -> None:
        self.inner = NoopSamplingClient(seed=0)
        self.barrier = threading.Barrier(meet) if meet > 1 else None
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.threads: set[int] = set()

    def sample(self, prompt: list[int], num_samples: int, params: Any) -> Any:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.threads.add(threading.get_ident())
        try:
            if self.barrier is not None:
                self.barrier.wait(timeout=10)
            return self.inner.sample(prompt, num_samples, params)
        finally:
            with self.lock:
                self.in_flight -= 1

    def compute_logprobs(self, tokens: list[int]) -> Any:
        return self.inner.compute_logprobs(tokens)


def make_ctx(concurrency: int, groups: int, kl_coef: float = 0.0) -> Context:
    spec = SimpleNamespace(rollout_concurrency=concurrency, group_size=3, seed=5, max_tokens=9, temperature=1.0, kl_coef=kl_coef)
    ctx = Context(spec=spec, adapters=None, bus=EventBus(), run_dir=Path("."))
    ctx.progress.step = 2
    ctx.use(Session).renderer = Renderer()
    ctx.use(Rollouts).groups = [Group([{"role": "user", "content": str(g)}], list(f"prompt {g}".encode()), problem=g)
                                for g in range(groups)]
    return ctx


def samples_of(ctx: Context) -> list[list[tuple]]:
    return [[(s.tokens, s.logprobs, s.text, s.reward, s.correct, s.ref_logprobs) for s in g.samples]
            for g in ctx.use(Rollouts).groups]


def rl_rollout(concurrency: int, groups: int = 16, meet: int = 1) -> tuple[Context, CountingSampler]:
    ctx = make_ctx(concurrency, groups, kl_coef=0.1)
    sampler = CountingSampler(meet)
    ctx.use(Rollouts).sampler = sampler
    state = ctx.use(RLState)
    state.env, state.reference = Env(), NoopSamplingClient(seed=1)
    Rollout().execute(ctx)
    return ctx, sampler


@pytest.mark.parametrize("concurrency", [8, 16])
def test_rollout_concurrency_lanes_really_sample_at_once(concurrency: int) -> None:
    """rollout_concurrency=8 (or 16, more than the old fixed 4 lanes) has that many sample calls in flight."""
    ctx, sampler = rl_rollout(concurrency, groups=16, meet=concurrency)
    assert sampler.most == concurrency
    assert len(sampler.threads) == concurrency
    assert all(g.samples for g in ctx.use(Rollouts).groups)


def test_rollouts_do_not_depend_on_rollout_concurrency() -> None:
    one, sampler = rl_rollout(1)
    assert sampler.most == 1 and len(sampler.threads) == 1
    expected = samples_of(one)
    assert all(group and group[0][5] is not None for group in expected)  # rewards and reference logprobs filled
    for concurrency in (2, 3, 8, 16, 64):
        assert samples_of(rl_rollout(concurrency)[0]) == expected, concurrency


@pytest.mark.parametrize("stage_cls", [StudentRollout, TeacherRollout])
def test_distillation_rollouts_do_not_depend_on_rollout_concurrency(stage_cls: type) -> None:
    def run(concurrency: int) -> list[list[tuple]]:
        ctx = make_ctx(concurrency, groups=10)
        ctx.use(Rollouts).sampler = CountingSampler()
        state = ctx.use(DistillState)
        state.teacher, state.teacher_renderer = NoopSamplingClient(seed=3), Renderer()
        stage_cls().execute(ctx)
        return samples_of(ctx)

    expected = run(1)
    assert all(expected)
    assert run(8) == expected


def test_a_failing_lane_fails_the_stage() -> None:
    class Boom(CountingSampler):
        def sample(self, prompt: list[int], num_samples: int, params: Any) -> Any:
            if prompt == list(b"prompt 5"):
                raise RuntimeError("sampler down")
            return super().sample(prompt, num_samples, params)

    ctx = make_ctx(4, groups=8)
    ctx.use(Rollouts).sampler = Boom()
    ctx.use(RLState).env = Env()
    with pytest.raises(RuntimeError, match="sampler down"):
        Rollout().execute(ctx)


def test_lane_count() -> None:
    assert [lane_count(c, 16) for c in (1, 4, 8, 16, 32)] == [1, 4, 8, 16, 16]
    assert lane_count(8, 0) == 1


def test_rl_run_is_the_same_at_any_rollout_concurrency(tmp_path: Path) -> None:
    common = ("recipe=rl_basic", "adapters=noop", "max_steps=2", "groups_per_batch=8", "eval_max_examples=4",
              "num_preview_samples=1", "telemetry=jsonl")
    rows = {}
    for concurrency in (1, 8):
        run_dir = tmp_path / f"c{concurrency}"
        r = run_kitchen("run", *common, f"rollout_concurrency={concurrency}", f"run_dir={run_dir}")
        assert r.code == 0, r
        assert_completed(run_dir, 2)
        rows[concurrency] = steps_of(run_dir)
    for step in (1, 2):
        for key in ("reward_mean", "sampled_tokens", "entropy", "loss"):
            assert rows[8][step][key] == rows[1][step][key], (step, key)
