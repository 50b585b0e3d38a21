"""RL environments: prompts to sample from and a scorer for the completions.

An environment is stateless: ``initial_prompts(seed, n)`` returns ``n`` ``Problem``s
(chat messages plus the hidden answer), the workflow samples a group of completions per
problem, and ``score(problem, completion_text)`` returns ``Score(reward, correct, info)``.
``eval_prompts(n, seed)`` returns a held-out evaluation set.

Everything is deterministic given the seed (``random.Random`` seeded with a string,
which is stable across processes and Python versions >= 3.2).
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, Sequence, runtime_checkable


@dataclass
class Problem:
    """One prompt of an environment. ``messages`` is what the policy sees; ``answer`` is not."""

    id: str
    messages: list[dict[str, str]]
    answer: Any
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.messages, "answer": self.answer, "metadata": self.metadata}


class Score(NamedTuple):
    reward: float
    correct: bool
    info: dict[str, Any]


@runtime_checkable
class Env(Protocol):
    name: str

    def initial_prompts(self, seed: int, n: int) -> list[Problem]:
        """``n`` training problems, deterministic in ``seed`` (repeats allowed)."""
        ...

    def eval_prompts(self, n: int, seed: int = 0) -> list[Problem]:
        """Up to ``n`` distinct held-out problems, disjoint from what ``initial_prompts`` yields."""
        ...

    def score(self, problem: Problem, completion_text: str) -> Score: ...

    def config(self) -> dict[str, Any]:
        """The constructor arguments, for run manifests."""
        ...


# --------------------------------------------------------------------------- parsing

# A number not glued to a preceding word character or dot: "x2" and the "5" of "3.5"
# are not numbers on their own, and the "-" of "7-5" is not a sign.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")
_BARE_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?\.?")


def parse_final_number(text: str) -> float | None:
    """The last number written in ``text`` (digits, optional sign, thousands commas, decimals).

    >>> parse_final_number("The answer is 12.")
    12.0
    >>> parse_final_number("twelve") is None
    True
    """
    text = text.replace("\u2212", "-")  # unicode minus
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return float(matches[-1].replace(",", ""))


def is_bare_number(text: str) -> bool:
    """True when the whole (stripped) completion is one number, optionally with a final period."""
    return _BARE_NUMBER.fullmatch(text.strip().replace("\u2212", "-")) is not None


# --------------------------------------------------------------------------- arithmetic

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_ENUMERATE_LIMIT = 200_000


class ArithmeticEnv:
    """Small arithmetic problems with an exact-answer reward.

    Prompt (one user message): ``"What is 7 + 5? Answer with just the number."``.
    Default difficulty: operands 0..9, ``+`` and ``-`` with non-negative results (155
    distinct problems), aimed at a ~135M instruct model getting some but not all right
    at temperature 1. Widen ``max_operand`` or add ``"*"`` to make it harder.

    Reward: 1.0 when the *last* number in the completion equals the answer (so "7 + 5
    = 12" and "The answer is 12." are right, "12, no 13" is wrong, "twelve" scores 0),
    plus ``format_bonus`` (default 0.0) when the whole completion is a bare number, right
    or wrong, to nudge the model towards the requested format. ``correct`` ignores the
    bonus.

    Held-out split: each distinct problem is assigned to eval with probability
    ``holdout_fraction`` by a stable hash of its text, so train and eval never share a
    problem. With the default space that is 30 of the 155 problems; ``eval_prompts``
    returns at most that many. ``holdout_fraction=0`` disables the split (eval then only
    uses a different seed stream and may overlap training).
    """

    name = "arithmetic"

    def __init__(
        self,
        min_operand: int = 0,
        max_operand: int = 9,
        ops: Sequence[str] = ("+", "-"),
        allow_negative: bool = False,
        holdout_fraction: float = 0.25,
        format_bonus: float = 0.0,
        system_prompt: str | None = None,
        template: str = "What is {a} {op} {b}? Answer with just the number.",
    ) -> None:
        if isinstance(ops, str):
            ops = [ops]
        ops = list(ops)
        bad = [o for o in ops if o not in _OPS]
        if not ops or bad:
            raise ValueError(f"ops must be a non-empty subset of {list(_OPS)}, got {ops}")
        if int(min_operand) > int(max_operand):
            raise ValueError(f"min_operand ({min_operand}) > max_operand ({max_operand})")
        if not 0.0 <= holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
        for key in ("{a}", "{op}", "{b}"):
            if key not in template:
                raise ValueError(f"template must contain {key}: {template!r}")
        self.min_operand = int(min_operand)
        self.max_operand = int(max_operand)
        self.ops = ops
        self.allow_negative = bool(allow_negative)
        self.holdout_fraction = float(holdout_fraction)
        self.format_bonus = float(format_bonus)
        self.system_prompt = system_prompt
        self.template = template

        self._train_pool: list[tuple[int, str, int]] | None = None
        self._eval_pool: list[tuple[int, str, int]] | None = None
        span = self.max_operand - self.min_operand + 1
        if span * span * len(ops) <= _ENUMERATE_LIMIT:
            space = [
                (a, op, b)
                for op in ops
                for a in range(self.min_operand, self.max_operand + 1)
                for b in range(self.min_operand, self.max_operand + 1)
                if self._allowed(a, op, b)
            ]
            self._train_pool = [t for t in space if not self._is_eval(t)]
            self._eval_pool = [t for t in space if self._is_eval(t)]
            if not self._train_pool:
                raise ValueError("the held-out split left no training problems; lower holdout_fraction")
            if self.holdout_fraction == 0.0:
                self._eval_pool = list(space)

    def config(self) -> dict[str, Any]:
        return {
            "min_operand": self.min_operand,
            "max_operand": self.max_operand,
            "ops": list(self.ops),
            "allow_negative": self.allow_negative,
            "holdout_fraction": self.holdout_fraction,
            "format_bonus": self.format_bonus,
            "system_prompt": self.system_prompt,
            "template": self.template,
        }

    # ---- problem space

    def _allowed(self, a: int, op: str, b: int) -> bool:
        return self.allow_negative or _OPS[op](a, b) >= 0

    def _is_eval(self, t: tuple[int, str, int]) -> bool:
        if self.holdout_fraction == 0.0:
            return False
        h = zlib.crc32(f"arithmetic:{t[0]}{t[1]}{t[2]}".encode()) % 1_000_000
        return h < self.holdout_fraction * 1_000_000

    def _random_triple(self, rng: random.Random) -> tuple[int, str, int]:
        op = rng.choice(self.ops)
        a = rng.randint(self.min_operand, self.max_operand)
        b = rng.randint(self.min_operand, self.max_operand)
        if not self._allowed(a, op, b):
            a, b = b, a  # only "-" can go negative; swapping makes it non-negative
        return a, op, b

    def _problem(self, t: tuple[int, str, int]) -> Problem:
        a, op, b = t
        text = self.template.format(a=a, op=op, b=b)
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": text})
        return Problem(id=f"{a}{op}{b}", messages=messages, answer=_OPS[op](a, b), metadata={"a": a, "op": op, "b": b})

    # ---- Env API

    def initial_prompts(self, seed: int, n: int) -> list[Problem]:
        """``n`` training problems drawn with replacement, deterministic in ``seed``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"arithmetic/train/{seed}")
        if self._train_pool is not None:
            return [self._problem(rng.choice(self._train_pool)) for _ in range(n)]
        out = []
        while len(out) < n:
            t = self._random_triple(rng)
            if not self._is_eval(t):
                out.append(self._problem(t))
        return out

    def eval_prompts(self, n: int, seed: int = 0) -> list[Problem]:
        """Up to ``n`` distinct held-out problems in a seed-determined order (see class doc)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"arithmetic/eval/{seed}")
        if self._eval_pool is not None:
            pool = list(self._eval_pool)
            rng.shuffle(pool)
            return [self._problem(t) for t in pool[:n]]
        seen: set[tuple[int, str, int]] = set()
        out = []
        for _ in range(100 * n + 1000):
            if len(out) >= n:
                break
            t = self._random_triple(rng)
            if t in seen or (self.holdout_fraction > 0 and not self._is_eval(t)):
                continue
            seen.add(t)
            out.append(self._problem(t))
        return out

    def num_eval_problems(self) -> int | None:
        """Size of the held-out pool, or None when the space is too large to enumerate."""
        return None if self._eval_pool is None else len(self._eval_pool)

    def score(self, problem: Problem, completion_text: str) -> Score:
        parsed = parse_final_number(completion_text)
        correct = parsed is not None and abs(parsed - float(problem.answer)) < 1e-9
        formatted = is_bare_number(completion_text)
        reward = (1.0 if correct else 0.0) + (self.format_bonus if formatted else 0.0)
        return Score(reward, correct, {"parsed": parsed, "answer": problem.answer, "formatted": formatted})
