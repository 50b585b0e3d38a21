"""Multi-turn envs for tests: a conversation of fixed length, and an env that fails on purpose.

Importable by ``_target_`` from a CLI run when tests/support is on PYTHONPATH.
"""

from __future__ import annotations

import random
from typing import Any

from kitchen.train.episodes import EnvGroupBuilder, StepResult


class TalkEnv:
    """``turns`` assistant turns; after each one a user says "Go on." (prefix-extended, so one datum).
    Reward per step: 1.0 when the reply's length is even (a signal the tiny model can move)."""

    def __init__(self, renderer: Any, question: str, turns: int, fail_at: int | None = None) -> None:
        self.renderer, self.turns, self.fail_at = renderer, turns, fail_at
        self.history = [{"role": "user", "content": question}]
        self.observation: list[int] = []
        self.done_turns = 0

    def initial_observation(self):
        self.observation = list(self.renderer.build_prompt(self.history))
        return self.observation, tuple(self.renderer.stop_sequences)

    def step(self, action):
        self.done_turns += 1
        if self.fail_at is not None and self.done_turns >= self.fail_at:
            raise RuntimeError("talk env broke on purpose")
        text = self.renderer.parse_response(action)
        reward = 1.0 if len(text) % 2 == 0 else 0.0
        if self.done_turns >= self.turns:
            return StepResult(reward, True, metrics={"correct": reward, "reply_chars": float(len(text))})
        assistant, new = {"role": "assistant", "content": text}, [{"role": "user", "content": "Go on."}]
        tail = self.renderer.build_continuation(self.history, assistant, new, action)
        self.history += [assistant, *new]
        self.observation = self.observation + list(action) + tail if tail is not None else list(self.renderer.build_prompt(self.history))
        return StepResult(reward, False, list(self.observation), tuple(self.renderer.stop_sequences),
                          metrics={"reply_chars": float(len(text))})


class TalkGroup(EnvGroupBuilder):
    def __init__(self, question: str, turns: int, fail_at: int | None) -> None:
        self.question, self.turns, self.fail_at, self.preview = question, turns, fail_at, question

    def make_envs(self, group_size: int, renderer: Any):
        return [TalkEnv(renderer, self.question, self.turns, self.fail_at) for _ in range(group_size)]


class TalkSource:
    """``env={_target_: episode_envs.TalkSource, turns: 3}``; ``fail_at`` makes every episode raise at that turn."""

    name = "talk"

    def __init__(self, turns: int = 3, fail_at: int | None = None) -> None:
        self.turns, self.fail_at = int(turns), fail_at

    def group_builders(self, seed: int, n: int):
        rng = random.Random(f"talk/{seed}")
        return [TalkGroup(f"Tell me about the number {rng.randint(0, 99)}.", self.turns, self.fail_at) for _ in range(n)]


def slow_calculator(expression: str) -> str:
    """A calculator that hangs (the tool-timeout test)."""
    import time

    time.sleep(3)
    return "0"
