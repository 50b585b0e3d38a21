"""The Completer port: how environments, judges, opponents and evaluators sample.

The seeds give kitchen exactly one port of its own, ``ports/completer``: the training
ports (:mod:`kitchen.ports.training`) say what a *backend* does, a completer says what a
*caller that wants text or tokens* needs, whatever backend is under it. Two layers, as
in tinker-cookbook's ``TokenCompleter`` / ``MessageCompleter``:

* a :class:`TokenCompleter` takes prompt tokens and a stop condition and gives sampled
  tokens with their logprobs (what an RL policy is: the rollout loop trains on exactly
  these tokens);
* a :class:`MessageCompleter` takes chat messages and gives one assistant message back,
  through a renderer (what a judge, an opponent or a tool-using helper model wants).

:class:`SamplingTokenCompleter` and :class:`SamplingMessageCompleter` implement them over
any :class:`~kitchen.ports.training.SamplingClient`: the local backend's, the Tinker SDK's
and ``kitchen serve``'s (through the tinker adapter) all speak that port, so one env runs
on every backend. Both return futures, like the port under them, so a caller submits all
its completions before it awaits any and a remote backend keeps every one in flight.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from kitchen.ports.types import SamplingParams

#: Where sampling stops: token ids or strings (what ``SamplingParams.stop`` takes).
StopCondition = Sequence[int] | Sequence[str]


@dataclass
class TokensWithLogprobs:
    """One completion: the sampled tokens (a stop token the backend kept stays in), their
    logprobs, and why sampling ended (``stop`` or ``length``)."""

    tokens: list[int]
    logprobs: list[float]
    stop_reason: str = "length"


@runtime_checkable
class TokenCompleter(Protocol):
    def complete(self, prompt: list[int], stop: StopCondition, *, num_samples: int = 1,
                 seed: int | None = None, max_tokens: int | None = None) -> Future[list[TokensWithLogprobs]]:
        """``num_samples`` completions of ``prompt`` until a stop in ``stop`` (or max_tokens)."""
        ...


@runtime_checkable
class MessageCompleter(Protocol):
    def complete(self, messages: Sequence[Mapping[str, Any]], *, seed: int | None = None) -> Future[dict[str, Any]]:
        """The next assistant message after ``messages`` (``{"role": "assistant", "content": ...}``)."""
        ...


class _Mapped(Future):
    """A future whose result is ``fn(inner.result())``; the mapping runs in the awaiting thread."""

    def __init__(self, inner: Future, fn: Any) -> None:
        super().__init__()
        self._inner, self._fn = inner, fn

    def result(self, timeout: float | None = None) -> Any:
        return self._fn(self._inner.result(timeout))

    def done(self) -> bool:
        return self._inner.done()


class SamplingTokenCompleter:
    """A :class:`TokenCompleter` over a sampling client, with the run's sampling settings.

    ``params`` carries temperature, top_p/top_k and the default max_tokens; each call
    sets its own stop condition and seed (per-(step, group, episode, turn) seeds keep a
    rollout independent of thread scheduling).
    """

    def __init__(self, sampler: Any, params: SamplingParams | None = None) -> None:
        self.sampler = sampler
        self.params = params or SamplingParams()

    def complete(self, prompt: list[int], stop: StopCondition, *, num_samples: int = 1,
                 seed: int | None = None, max_tokens: int | None = None) -> Future[list[TokensWithLogprobs]]:
        params = replace(self.params, stop=tuple(stop), seed=seed,
                         max_tokens=int(max_tokens) if max_tokens is not None else self.params.max_tokens)
        future = self.sampler.sample(list(prompt), int(num_samples), params)
        return _Mapped(future, lambda result: [TokensWithLogprobs(list(s.tokens), list(s.logprobs), str(s.stop_reason))
                                               for s in result.sequences])


class SamplingMessageCompleter:
    """A :class:`MessageCompleter`: messages -> renderer prompt -> token completer -> renderer parse.

    ``tools`` (JSON schemas) are rendered into the prompt the way the renderer renders
    them (the model's own chat template when it supports tools); a reply that calls
    tools carries them as ``tool_calls``, parsed by the same renderer.
    """

    def __init__(self, completer: TokenCompleter, renderer: Any, tools: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.completer = completer
        self.renderer = renderer
        self.tools = list(tools) if tools else None

    def complete(self, messages: Sequence[Mapping[str, Any]], *, seed: int | None = None) -> Future[dict[str, Any]]:
        prompt = self.renderer.build_prompt(list(messages), tools=self.tools) if self.tools else self.renderer.build_prompt(list(messages))
        future = self.completer.complete(prompt, self.renderer.stop_sequences, seed=seed)
        return _Mapped(future, lambda outs: self._message(outs[0].tokens))

    def _message(self, tokens: list[int]) -> dict[str, Any]:
        parse = getattr(self.renderer, "parse_message", None)
        if parse is not None:
            return parse(tokens)
        return {"role": "assistant", "content": self.renderer.parse_response(tokens)}
