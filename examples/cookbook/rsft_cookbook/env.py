"""The letters task: name something that starts with a given letter.

It follows kitchen's Env protocol (kitchen.api.Env): ``name``,
``initial_prompts(seed, n)``, ``eval_prompts(n, seed)`` and ``score(problem, text)``
returning ``Score(reward, correct, info)``. Everything is deterministic in the seed.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Any

from kitchen.api import Problem, Score

CATEGORIES = ("an animal", "a fruit", "a city", "a colour", "a first name", "a verb")
_WORD = re.compile(r"[a-z]+")
_FILLER = {"is", "in", "it", "an", "and", "the", "that", "with", "letter", "starts", "answer", "word", "one"}


class LetterEnv:
    """"Name an animal that starts with the letter 'c'. Answer with one word."

    ``correct`` when the last word (two letters or more, not a filler like "is") starts
    with the letter: "cat" and "A good one is camel." are right, "c" and "dog" are not. Reward: ``1 -
    format_bonus`` for a correct answer plus ``format_bonus`` when the answer is one word.
    One (category, letter) pair in ``holdout_every`` is held out for evaluation.
    """

    name = "letters"

    def __init__(self, letters: str = "abcdefghij", format_bonus: float = 0.25, holdout_every: int = 4) -> None:
        if not letters.isalpha() or holdout_every < 2:
            raise ValueError(f"letters must be letters and holdout_every >= 2, got {letters!r}, {holdout_every}")
        self.letters, self.format_bonus, self.holdout_every = letters.lower(), float(format_bonus), int(holdout_every)
        pairs = [(c, x) for c in CATEGORIES for x in self.letters]
        held = {p for p in pairs if zlib.crc32(f"{p[0]}/{p[1]}".encode()) % self.holdout_every == 0}
        self.train_pairs = [p for p in pairs if p not in held]
        self.eval_pairs = [p for p in pairs if p in held]

    def config(self) -> dict[str, Any]:
        return {"letters": self.letters, "format_bonus": self.format_bonus, "holdout_every": self.holdout_every}

    def _problem(self, pair: tuple[str, str]) -> Problem:
        category, letter = pair
        text = f"Name {category} that starts with the letter '{letter}'. Answer with one word."
        return Problem(id=f"{category}/{letter}", messages=[{"role": "user", "content": text}], answer=letter)

    def initial_prompts(self, seed: int, n: int) -> list[Problem]:
        rng = random.Random(f"letters/train/{seed}")
        return [self._problem(rng.choice(self.train_pairs)) for _ in range(n)]

    def eval_prompts(self, n: int, seed: int = 0) -> list[Problem]:
        pool = list(self.eval_pairs)
        random.Random(f"letters/eval/{seed}").shuffle(pool)
        return [self._problem(p) for p in pool[:n]]

    def score(self, problem: Problem, completion_text: str) -> Score:
        words = [w for w in _WORD.findall(completion_text.lower()) if len(w) > 1 and w not in _FILLER]
        correct = bool(words) and words[-1].startswith(problem.answer)
        reward = (1.0 - self.format_bonus) * correct + self.format_bonus * (len(words) == 1)
        return Score(reward, correct, {"answer": words[-1] if words else ""})
