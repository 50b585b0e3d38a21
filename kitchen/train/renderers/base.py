"""The renderer contract and what every renderer shares: weights per ``train_on_what``,
truncation, plain-text and completion examples. Subclasses render one layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kitchen.errors import ConfigError, DataError
from kitchen.train.messages import check_messages
from kitchen.train.train_on_what import TrainOnWhat, parse_train_on_what


@dataclass
class RenderedExample:
    """Tokens plus a weight per token (1.0 = train on it), after truncation.

    ``weights[0]`` never contributes to the loss (the first token is never a target);
    ``num_trained_tokens`` and ``empty`` therefore look at ``weights[1:]``. An ``empty``
    example (nothing left to train on, usually because truncation cut the assistant
    turn away) must be skipped and counted by the caller, never trained on.
    """

    tokens: list[int]
    weights: list[float]
    truncated: bool = False
    original_length: int = 0

    @property
    def num_trained_tokens(self) -> int:
        n = len(self.weights) - 1
        return n - self.weights[1:].count(0.0) if n > 0 else 0

    @property
    def empty(self) -> bool:
        return self.num_trained_tokens == 0


@dataclass(frozen=True)
class MessageSpan:
    """Token positions of one rendered message: header [start, action_start),
    action [action_start, action_end) (content + end-of-turn), trailer [action_end, end)."""

    index: int
    role: str
    start: int
    action_start: int
    action_end: int
    end: int


def _weight_of(message: Mapping[str, Any], default: bool) -> bool:
    """Whether a message trains: its own ``weight`` (0/1) when set, else ``default``."""
    w = message.get("weight")
    return bool(w) if w is not None else default


class Renderer:
    """Base class. Subclasses implement :meth:`render` and :meth:`build_prompt`."""

    name: str = "base"

    def __init__(self, tokenizer: Any, train_on_what: str | TrainOnWhat = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
                 max_length: int | None = 512) -> None:
        self.tokenizer = tokenizer
        self.train_on_what = parse_train_on_what(train_on_what)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ConfigError(f"max_length must be an integer >= 2 (or null for no limit), got {max_length!r}.")
        self.max_length = max_length

    # -- to implement ------------------------------------------------------------------
    def render(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[MessageSpan]]:
        """All tokens of the conversation (untruncated) and each message's span."""
        raise NotImplementedError

    def build_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Tokens of the conversation followed by the assistant generation prefix."""
        raise NotImplementedError

    @property
    def stop_sequences(self) -> list[int] | list[str]:
        """Token ids (or strings) at which sampling should stop."""
        raise NotImplementedError

    def parse_response(self, tokens: Sequence[int]) -> str:
        """Sampled tokens to the assistant's text (end-of-turn and after removed)."""
        raise NotImplementedError

    # -- tool calling ------------------------------------------------------------------
    # Subclasses whose template renders tools itself (``native_tools``) get the messages
    # as they are, with ``tools=``; every other layout gets the text fallback below: the
    # tool list as a system message, each call as ``<tool_call>{json}</tool_call>`` in
    # the assistant's content, and results as ``tool`` turns.

    native_tools: bool = False

    def tool_messages(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None) -> list[dict]:
        """``messages`` (with ``tool_calls`` on assistant turns) in the plain ``role``/``content``
        shape this layout renders, the tool list included as a system message."""
        from kitchen.train.tools import ToolCall, format_tool_call, tools_system_prompt

        out: list[dict] = []
        for m in messages:
            m = dict(m)
            calls = m.pop("tool_calls", None) or []
            m.pop("tool_call_id", None)
            m.pop("name", None)
            if calls:
                text = "".join(format_tool_call(ToolCall(c["function"]["name"], dict(c["function"].get("arguments") or {})))
                               for c in calls)
                m["content"] = (m.get("content") or "") + text
            out.append({"role": m["role"], "content": m.get("content") or ""})
        if tools:
            prompt = tools_system_prompt(tools)
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
            else:
                out.insert(0, {"role": "system", "content": prompt})
        return out

    def parse_message(self, tokens: Sequence[int]) -> dict[str, Any]:
        """Sampled tokens to an assistant message: its text, the ``tool_calls`` it makes, and
        ``tool_call_error`` when it tries to call a tool and the call does not parse."""
        from kitchen.train.tools import parse_tool_calls, strip_tool_calls

        text = self.parse_response(tokens)
        calls, error = parse_tool_calls(text)
        message: dict[str, Any] = {"role": "assistant", "content": strip_tool_calls(text) if calls else text}
        if calls:
            message["tool_calls"] = [c.to_message() for c in calls]
        if error:
            message["tool_call_error"] = error
        return message

    def build_continuation(self, history: Sequence[Mapping[str, Any]], assistant: Mapping[str, Any],
                           new_messages: Sequence[Mapping[str, Any]], action: Sequence[int],
                           tools: Sequence[Any] | None = None) -> list[int] | None:
        """Tokens that follow a sampled ``action`` (the assistant turn after ``history``) so that
        ``prompt + action + continuation`` is the prompt for the next assistant turn after
        ``new_messages``; None when this layout cannot extend the sampled tokens exactly (the
        caller then renders the whole conversation again, a new datum)."""
        return None

    # -- shared ------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_many(self, conversations: Sequence[Sequence[Mapping[str, Any]]]) -> list[tuple[list[int], list[MessageSpan]]]:
        """:meth:`render` for many conversations (subclasses batch the tokenizer call)."""
        return [self.render(c) for c in conversations]

    def build_supervised(self, messages: Sequence[Mapping[str, Any]],
                         train_on_what: str | TrainOnWhat | None = None) -> RenderedExample:
        """Tokens and weights for supervised training on ``messages``."""
        return self.build_supervised_many([messages], train_on_what)[0]

    def build_supervised_many(self, conversations: Sequence[Sequence[Mapping[str, Any]]],
                              train_on_what: str | TrainOnWhat | None = None) -> list[RenderedExample]:
        """:meth:`build_supervised` for a batch of conversations (one batched tokenizer call)."""
        what = self.train_on_what if train_on_what is None else parse_train_on_what(train_on_what)
        checked = [check_messages(m) for m in conversations]
        return [self._weigh(msgs, tokens, spans, what) for msgs, (tokens, spans) in zip(checked, self.render_many(checked))]

    def _weigh(self, msgs: list[dict], tokens: list[int], spans: list[MessageSpan], what: TrainOnWhat) -> RenderedExample:
        weights = [0.0] * len(tokens)
        if what is TrainOnWhat.ALL_TOKENS:
            weights = [1.0] * len(tokens)
        else:
            if what is TrainOnWhat.LAST_ASSISTANT_MESSAGE:
                chosen = [s for s in spans if s.role == "assistant"][-1:]
            elif what is TrainOnWhat.ALL_ASSISTANT_MESSAGES:
                chosen = [s for s in spans if s.role == "assistant"]
            else:  # ALL_MESSAGES
                chosen = spans
            if any(m.get("weight") is not None for m in msgs):
                # a per-message weight (0/1) decides for its message; the others follow train_on_what
                picked = {s.index for s in chosen}
                chosen = [s for s in spans if _weight_of(msgs[s.index], s.index in picked)]
            for s in chosen:
                weights[s.action_start:s.action_end] = [1.0] * (s.action_end - s.action_start)
        return self._truncate(tokens, weights)

    def build_text(self, text: str) -> RenderedExample:
        """Plain text for continued pretraining: ``[bos] text eos``, every token trained."""
        if not isinstance(text, str):
            raise DataError(f"Invalid text example: 'text' must be a string, got {type(text).__name__}.")
        tokens = self._bos_prefix() + self._encode(text)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None:
            tokens.append(int(eos))
        return self._truncate(tokens, [1.0] * len(tokens))

    def _bos_prefix(self) -> list[int]:
        """``[bos]`` when the tokenizer itself prepends one by default, else ``[]``."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None or bos == getattr(self.tokenizer, "eos_token_id", None):
            return []
        try:
            with_special = list(self.tokenizer.encode("a", add_special_tokens=True))
        except TypeError:
            return []
        return [bos] if with_special and with_special[0] == bos else []

    def build_completion(self, prompt: Sequence[Mapping[str, Any]],
                         completion: Sequence[Mapping[str, Any]]) -> RenderedExample:
        """``prompt + completion`` with weight only on the completion messages' actions
        (preference pairs: both completions share the same prompt tokens)."""
        msgs = check_messages(list(prompt) + list(completion))
        tokens, spans = self.render(msgs)
        weights = [0.0] * len(tokens)
        for s in spans[len(prompt):]:
            for k in range(s.action_start, s.action_end):
                weights[k] = 1.0
        return self._truncate(tokens, weights)

    def _truncate(self, tokens: list[int], weights: list[float]) -> RenderedExample:
        n = len(tokens)
        if self.max_length is not None and n > self.max_length:
            return RenderedExample(tokens[: self.max_length], weights[: self.max_length], True, n)
        return RenderedExample(tokens, weights, False, n)

    def describe(self) -> dict[str, Any]:
        """What identifies this renderer's output (for cache keys and run metadata)."""
        return {"renderer": self.name, "train_on_what": self.train_on_what.value, "max_length": self.max_length}
