"""Rendered examples to :class:`~kitchen.ports.types.Datum` (next-token shifted).

A rendered sequence ``tokens`` with per-token ``weights`` becomes a Datum with
``model_input = tokens[:-1]``, ``target_tokens = tokens[1:]`` and
``weights = weights[1:]``: position ``k`` of the datum predicts ``tokens[k + 1]``.

Helpers here cover the three data shapes the workflows need:

* SFT rows ``{"messages": [...]}`` (per-message ``weight`` 0/1 honoured) or
  ``{"text": ...}`` (every token trained) -> :func:`build_sft_data` (other shapes are
  normalised to these by :mod:`kitchen.train.formats`);
* preference rows ``{"prompt": [...], "chosen": ..., "rejected": ...}`` ->
  :func:`build_preference_data` (two datums per row sharing the prompt tokens, weight
  on the completion only);
* RL rollouts: prompt tokens + sampled tokens with the sampler's logprobs and an
  advantage -> :func:`datum_from_sampled`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from kitchen.errors import DataError
from kitchen.ports.types import Datum
from kitchen.train.messages import message_problem
from kitchen.train.renderers.base import RenderedExample, Renderer
from kitchen.train.train_on_what import TrainOnWhat


def datum_from_rendered(tokens: Sequence[int], weights: Sequence[float]) -> Datum:
    """Shift a rendered sequence into a Datum (``model_input`` = tokens[:-1])."""
    if len(tokens) != len(weights):
        raise ValueError(f"tokens ({len(tokens)}) and weights ({len(weights)}) differ in length")
    if len(tokens) < 2:
        raise ValueError("a datum needs at least 2 tokens (one input, one target)")
    return Datum(
        model_input=list(map(int, tokens[:-1])),
        loss_fn_inputs={"target_tokens": list(map(int, tokens[1:])), "weights": list(map(float, weights[1:]))},
    )


def rendered_to_datum(example: RenderedExample) -> Datum:
    return datum_from_rendered(example.tokens, example.weights)


@dataclass
class DataStats:
    """What happened while turning rows into datums.

    ``examples``: rows read; ``kept``: datums produced; ``truncated``: examples cut to
    max_length (kept or not); ``dropped_empty``: examples skipped because nothing was
    left to train on (e.g. truncation removed the whole assistant turn);
    ``trained_tokens`` / ``total_tokens``: weighted / all target tokens over kept datums.
    For preference data the counts are per pair.
    """

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_empty: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0
    max_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.kept}/{self.examples} examples kept, {self.truncated} truncated, "
            f"{self.dropped_empty} dropped (nothing left to train on), "
            f"{self.trained_tokens} trained of {self.total_tokens} tokens"
        )

    def _add(self, datum: Datum) -> None:
        self.kept += 1
        self.trained_tokens += datum.num_loss_tokens()
        self.total_tokens += datum.length
        self.max_tokens = max(self.max_tokens, datum.length + 1)


def _row_error(source: str, index: int, problem: str, expected: str) -> DataError:
    return DataError(f"{source}: row {index} is invalid: {problem}. Expected {expected}.")


RENDER_BATCH = 256  # conversations per batched tokenizer call

SFT_EXPECTED = (
    'each row to be an object with "messages": a list of {"role": "system"|"user"|"assistant"|"tool", '
    '"content": "<text>"} with at least one assistant message'
)


def check_sft_row(row: Any, index: int, source: str, train_on_what: str | TrainOnWhat) -> list | None:
    """The row's messages (None for a plain ``text`` row), or a DataError naming the row and
    what is wrong. Needs no tokenizer, so preflight runs it on every row."""
    if isinstance(row, Mapping) and "messages" not in row and isinstance(row.get("text"), str):
        return None
    if not isinstance(row, Mapping) or "messages" not in row:
        got = f"keys {sorted(row)}" if isinstance(row, Mapping) else f"a {type(row).__name__}"
        raise _row_error(source, index, f'no "messages" field (got {got})', SFT_EXPECTED)
    messages = row["messages"]
    problem = message_problem(messages)
    mode = TrainOnWhat(train_on_what)
    needs_assistant = mode in (TrainOnWhat.LAST_ASSISTANT_MESSAGE, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
    weighted = problem is None and any(m.get("weight") is not None for m in messages)
    if problem is None and needs_assistant and not weighted and not any(m["role"] == "assistant" for m in messages):
        problem = f"no assistant message to train on (train_on_what={mode.value})"
    if problem:
        raise _row_error(source, index, problem, SFT_EXPECTED)
    return messages


def check_preference_row(row: Any, index: int, source: str) -> list:
    """``[prompt, chosen, rejected]`` as message lists, or a DataError naming the row."""
    if not isinstance(row, Mapping) or not all(k in row for k in ("prompt", "chosen", "rejected")):
        got = f"keys {sorted(row)}" if isinstance(row, Mapping) else f"a {type(row).__name__}"
        raise _row_error(source, index, f"missing fields (got {got})", PREFERENCE_EXPECTED)
    parts = [_as_prompt(row["prompt"]), _as_completion(row["chosen"]), _as_completion(row["rejected"])]
    for name, v in zip(("prompt", "chosen", "rejected"), parts):
        if isinstance(v, str):
            raise _row_error(source, index, f"{name}: {v}", PREFERENCE_EXPECTED)
    return parts


def render_sft_examples(rows: Iterable[Mapping[str, Any]], renderer: Renderer, source: str = "dataset",
                        start: int = 0) -> list[RenderedExample]:
    """One :class:`RenderedExample` per row, in order (``start``: index of the first row, for errors).

    Invalid rows raise DataError naming the row index. Conversations are rendered in
    batches of :data:`RENDER_BATCH` (one tokenizer call each).
    """
    out: list[RenderedExample] = []
    pending: list[tuple[int, Any]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            out.extend(renderer.build_supervised_many([m for _, m in pending]))
        except DataError:  # find the row that failed
            for i, messages in pending:
                try:
                    out.append(renderer.build_supervised(messages))
                except DataError as exc:
                    raise DataError(f"{source}: row {i}: {exc.message}", hint=exc.hint) from exc
        pending.clear()

    for i, row in enumerate(rows, start):
        messages = check_sft_row(row, i, source, renderer.train_on_what)
        if messages is None:
            flush()  # keep the rows' order
            out.append(renderer.build_text(row["text"]))  # continued pretraining: loss on every token
            continue
        pending.append((i, messages))
        if len(pending) >= RENDER_BATCH:
            flush()
    flush()
    return out


def build_sft_data(rows: Iterable[Mapping[str, Any]], renderer: Renderer,
                   source: str = "dataset") -> tuple[list[Datum], DataStats]:
    """Render every row (``messages`` or ``text``) and shift into datums.

    Invalid rows raise DataError naming the row index. Examples left with no trained
    token (after truncation) are dropped and counted in ``stats.dropped_empty``, with
    one warning for the whole dataset.
    """
    stats = DataStats()
    data: list[Datum] = []
    for example in render_sft_examples(rows, renderer, source):
        stats.examples += 1
        stats.truncated += example.truncated
        if example.empty or len(example.tokens) < 2:
            stats.dropped_empty += 1
            continue
        datum = rendered_to_datum(example)
        data.append(datum)
        stats._add(datum)
    return data, stats


# -- preference pairs -----------------------------------------------------------------

PREFERENCE_EXPECTED = (
    'each row to be an object with "prompt" (a list of messages, or a string taken as one user '
    'message) and "chosen" and "rejected" (each a string, one assistant message object, or a '
    "list of assistant message objects)"
)


def _as_prompt(value: Any) -> list[dict] | str:
    """Prompt messages, or a string describing the problem."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    problem = message_problem(value)
    return problem if problem else [dict(m) for m in value]


def _as_completion(value: Any) -> list[dict] | str:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, Mapping):
        value = [value]
    problem = message_problem(value)
    if problem:
        return problem
    if any(m["role"] != "assistant" for m in value):
        return "completion messages must all have role 'assistant'"
    return [dict(m) for m in value]


def preference_pair(renderer: Renderer, prompt: Any, chosen: Any, rejected: Any) -> tuple[RenderedExample, RenderedExample]:
    """Render ``prompt + chosen`` and ``prompt + rejected`` with weight on the completion
    only. Raises DataError for malformed inputs."""
    p = _as_prompt(prompt)
    c = _as_completion(chosen)
    r = _as_completion(rejected)
    for name, v in (("prompt", p), ("chosen", c), ("rejected", r)):
        if isinstance(v, str):
            raise DataError(f"Invalid preference example: {name}: {v}. Expected {PREFERENCE_EXPECTED}.")
    return renderer.build_completion(p, c), renderer.build_completion(p, r)  # type: ignore[arg-type]


def render_preference_examples(rows: Iterable[Mapping[str, Any]], renderer: Renderer, source: str = "dataset",
                               start: int = 0) -> list[tuple[RenderedExample, RenderedExample]]:
    """``(chosen, rejected)`` rendered examples per row, in order; DataError names a bad row."""
    out = []
    for i, row in enumerate(rows, start):
        parts = check_preference_row(row, i, source)
        try:
            chosen = renderer.build_completion(parts[0], parts[1])  # type: ignore[arg-type]
            rejected = renderer.build_completion(parts[0], parts[2])  # type: ignore[arg-type]
        except DataError as exc:
            raise DataError(f"{source}: row {i}: {exc.message}", hint=exc.hint) from exc
        out.append((chosen, rejected))
    return out


def build_preference_data(rows: Iterable[Mapping[str, Any]], renderer: Renderer,
                          source: str = "dataset") -> tuple[list[tuple[Datum, Datum]], DataStats]:
    """``(chosen_datum, rejected_datum)`` per row. A pair where either side has nothing
    left to train on after truncation is dropped and counted."""
    stats = DataStats()
    pairs: list[tuple[Datum, Datum]] = []
    for chosen, rejected in render_preference_examples(rows, renderer, source):
        stats.examples += 1
        stats.truncated += chosen.truncated or rejected.truncated
        if chosen.empty or rejected.empty:
            stats.dropped_empty += 1
            continue
        pair = (rendered_to_datum(chosen), rendered_to_datum(rejected))
        pairs.append(pair)
        stats.kept += 1
        for d in pair:
            stats.trained_tokens += d.num_loss_tokens()
            stats.total_tokens += d.length
            stats.max_tokens = max(stats.max_tokens, d.length + 1)
    return pairs, stats


# -- RL -------------------------------------------------------------------------------

def datum_from_sampled(prompt_tokens: Sequence[int], sampled_tokens: Sequence[int],
                       sampled_logprobs: Sequence[float], advantage: float | Sequence[float]) -> Datum:
    """A policy-gradient datum from one rollout.

    ``tokens = prompt + sampled``; targets are ``tokens[1:]``. On targets that belong to
    the prompt, ``weights``, ``logprobs`` and ``advantages`` are 0; on sampled targets
    weights are 1, logprobs are the sampler's and advantages are ``advantage`` (a scalar
    broadcast to every sampled token, or one value per sampled token).
    """
    if not prompt_tokens:
        raise ValueError("prompt_tokens must not be empty")
    if not sampled_tokens:
        raise ValueError("sampled_tokens must not be empty")
    if len(sampled_logprobs) != len(sampled_tokens):
        raise ValueError(f"{len(sampled_logprobs)} logprobs for {len(sampled_tokens)} sampled tokens")
    if isinstance(advantage, (int, float)):
        adv = [float(advantage)] * len(sampled_tokens)
    else:
        adv = [float(a) for a in advantage]
        if len(adv) != len(sampled_tokens):
            raise ValueError(f"{len(adv)} advantages for {len(sampled_tokens)} sampled tokens")
    tokens = [int(t) for t in prompt_tokens] + [int(t) for t in sampled_tokens]
    n_prompt_targets = len(prompt_tokens) - 1
    zeros = [0.0] * n_prompt_targets
    return Datum(
        model_input=tokens[:-1],
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "weights": zeros + [1.0] * len(sampled_tokens),
            "logprobs": zeros + [float(x) for x in sampled_logprobs],
            "advantages": zeros + adv,
        },
    )
