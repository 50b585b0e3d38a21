"""The ``role: text`` renderer, for base models without a chat template."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kitchen.train.messages import check_messages
from kitchen.train.renderers.base import MessageSpan, Renderer
from kitchen.train.train_on_what import TrainOnWhat


class RoleColonRenderer(Renderer):
    """``User: ...\\n\\nAssistant: ...<eos>\\n\\n`` for base models without a chat template.

    Per message: header ``Role:`` (untrained), then the action `` content`` plus its end
    of turn. For assistant turns the end of turn is the eos token when the tokenizer has
    one (sampling stops there; the ``\\n\\n`` that follows is an untrained separator);
    otherwise, and for other roles, it is the ``\\n\\n`` separator itself (trained).
    Pieces are tokenized separately, the same way at training and sampling time.
    """

    name = "role_colon"
    ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
    SEPARATOR = "\n\n"

    def __init__(self, tokenizer: Any, train_on_what: str | TrainOnWhat = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
                 max_length: int | None = 512) -> None:
        super().__init__(tokenizer, train_on_what, max_length)
        self.eos_id: int | None = getattr(tokenizer, "eos_token_id", None)
        self._bos: list[int] = []
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and bos != self.eos_id:
            try:  # prepend BOS only when the tokenizer itself adds one by default
                with_special = list(tokenizer.encode("a", add_special_tokens=True))
                if with_special and with_special[0] == bos:
                    self._bos = [bos]
            except TypeError:
                pass

    def render(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[MessageSpan]]:
        tokens: list[int] = list(self._bos)
        spans: list[MessageSpan] = []
        for i, m in enumerate(messages):
            start = len(tokens)
            tokens += self._encode(f"{self.ROLE_NAMES[m['role']]}:")
            a_start = len(tokens)
            if self.eos_id is not None and m["role"] == "assistant":
                tokens += self._encode(" " + m["content"]) + [self.eos_id]
                a_end = len(tokens)
                tokens += self._encode(self.SEPARATOR)
            else:
                tokens += self._encode(" " + m["content"] + self.SEPARATOR)
                a_end = len(tokens)
            spans.append(MessageSpan(i, m["role"], start, a_start, a_end, len(tokens)))
        return tokens, spans

    def build_prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> list[int]:
        if tools or any(m.get("tool_calls") for m in messages):
            messages = self.tool_messages(messages, tools)
        tokens, _ = self.render(check_messages(messages))
        return tokens + self._encode(f"{self.ROLE_NAMES['assistant']}:")

    def build_continuation(self, history: Sequence[Mapping[str, Any]], assistant: Mapping[str, Any],
                           new_messages: Sequence[Mapping[str, Any]], action: Sequence[int],
                           tools: Sequence[Any] | None = None) -> list[int] | None:
        """The pieces are tokenized separately here anyway, so the continuation is exact:
        the end of turn the action lacks (a length stop), the separator, each new message, the header."""
        tokens: list[int] = []
        if self.eos_id is not None:
            if not action or action[-1] != self.eos_id:
                tokens.append(self.eos_id)
            tokens += self._encode(self.SEPARATOR)
        else:
            tokens += self._encode(self.SEPARATOR)
        for m in self.tool_messages(new_messages, None):
            tokens += self._encode(f"{self.ROLE_NAMES[m['role']]}:") + self._encode(" " + m["content"] + self.SEPARATOR)
        return tokens + self._encode(f"{self.ROLE_NAMES['assistant']}:")

    @property
    def stop_strings(self) -> list[str]:
        return [self.SEPARATOR + self.ROLE_NAMES["user"] + ":"]

    @property
    def stop_sequences(self) -> list[int] | list[str]:
        return [self.eos_id] if self.eos_id is not None else self.stop_strings

    def parse_response(self, tokens: Sequence[int]) -> str:
        out = list(tokens)
        if self.eos_id is not None and self.eos_id in out:
            out = out[: out.index(self.eos_id)]
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        for stop in self.stop_strings:
            if stop in text:
                text = text[: text.index(stop)]
        return text.strip()
