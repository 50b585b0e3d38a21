"""Renderers: conversations (OpenAI-style messages) to tokens and per-token weights.

A renderer turns ``[{"role": ..., "content": ...}, ...]`` into the token sequence a
model trains on, with a weight per token saying which tokens the loss covers
(:class:`TrainOnWhat`), and knows the reverse direction for sampling: the prompt that
asks the model for the next assistant turn (:meth:`Renderer.build_prompt`), where to
stop sampling (:attr:`Renderer.stop_sequences`) and how to turn sampled tokens back
into text (:meth:`Renderer.parse_response`).

Each message renders as ``header | action | trailer``: the header is the role marker
(``<|im_start|>assistant\\n`` or ``Assistant:``), never trained except with
``all_tokens``; the action is the message content plus its end-of-turn token (what a
sampler must produce, so it is what we train on); the trailer is whatever the template
puts after the end-of-turn token (ChatML's ``\\n``), also never trained except with
``all_tokens``.

Two renderers:

* :class:`ChatTemplateRenderer` uses the tokenizer's own Jinja chat template. Message
  boundaries are found by rendering the conversation incrementally (messages[:i] vs
  messages[:i+1], and messages[:i] with the generation prompt for assistant headers)
  and checking that each partial render is a prefix of the full one, so templates that
  inject text (SmolLM2's default system prompt) are handled exactly. A template that
  rewrites earlier turns (not prefix-stable) is refused with a clear error.
* :class:`RoleColonRenderer` is for base models without a template:
  ``User: ...\\n\\nAssistant: ...<eos>\\n\\n``.

Pure Python: the only tokenizer surface used is ``encode``/``decode``/``eos_token_id``
(plus ``apply_chat_template`` for the chat-template renderer).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

from kitchen.errors import ConfigError, DataError, did_you_mean

RENDERERS: tuple[str, ...] = ("auto", "chat_template", "role_colon")
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


class TrainOnWhat(str, Enum):
    """Which tokens of a conversation carry loss weight 1.0."""

    LAST_ASSISTANT_MESSAGE = "last_assistant_message"
    ALL_ASSISTANT_MESSAGES = "all_assistant_messages"
    ALL_MESSAGES = "all_messages"
    ALL_TOKENS = "all_tokens"

    def __str__(self) -> str:  # so f-strings and YAML dumps show the plain value
        return self.value


TRAIN_ON_WHAT: tuple[str, ...] = tuple(t.value for t in TrainOnWhat)


def parse_train_on_what(value: str | TrainOnWhat) -> TrainOnWhat:
    """``value`` as a :class:`TrainOnWhat`, or ConfigError listing the allowed values."""
    if isinstance(value, TrainOnWhat):
        return value
    try:
        return TrainOnWhat(str(value))
    except ValueError:
        raise ConfigError(
            f"Unknown train_on_what {value!r}; allowed values: {', '.join(TRAIN_ON_WHAT)}."
            + did_you_mean(str(value), TRAIN_ON_WHAT)
        ) from None


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


def message_problem(messages: Any) -> str | None:
    """Why ``messages`` is not a valid OpenAI-style message list, or None if it is."""
    if not isinstance(messages, (list, tuple)):
        return f"'messages' must be a list of {{'role': ..., 'content': ...}} objects, got {type(messages).__name__}"
    if not messages:
        return "'messages' is an empty list"
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping):
            return f"message {j} is a {type(m).__name__}, expected an object with 'role' and 'content'"
        role = m.get("role")
        if role not in ROLES:
            return f"message {j} has role {role!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"message {j} ({role}) needs a string 'content', got {type(m.get('content')).__name__}"
    return None


def _weight_of(message: Mapping[str, Any], default: bool) -> bool:
    """Whether a message trains: its own ``weight`` (0/1) when set, else ``default``."""
    w = message.get("weight")
    return bool(w) if w is not None else default


def _check_messages(messages: Any) -> list[dict]:
    problem = message_problem(messages)
    if problem:
        raise DataError(f"Invalid conversation: {problem}.")
    return [dict(m) for m in messages]


def _offset_index(n_chars: int, n_tokens: int, starts: list[int], ends: list[int]):
    """Character boundary -> token index from a fast tokenizer's offsets (see ``_tokenize_many``)."""
    def to_token(c: int, end: bool) -> int:
        if c <= 0:
            return 0
        if c >= n_chars:
            return n_tokens
        # end: tokens starting before c; start: tokens ending at or before c
        return bisect.bisect_left(starts, c) if end else bisect.bisect_right(ends, c)

    return to_token


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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
        checked = [_check_messages(m) for m in conversations]
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
        msgs = _check_messages(list(prompt) + list(completion))
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


def _special_token_strings(tokenizer: Any) -> list[str]:
    found: set[str] = set()
    for tok in getattr(tokenizer, "all_special_tokens", None) or []:
        if isinstance(tok, str) and tok:
            found.add(tok)
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for added in decoder.values():
        content = getattr(added, "content", None)
        if content and getattr(added, "special", False):
            found.add(content)
    eos = getattr(tokenizer, "eos_token", None)
    if isinstance(eos, str) and eos:
        found.add(eos)
    return sorted(found, key=len, reverse=True)


class ChatTemplateRenderer(Renderer):
    """Renders with ``tokenizer.apply_chat_template`` and finds exact message spans."""

    name = "chat_template"

    def __init__(self, tokenizer: Any, train_on_what: str | TrainOnWhat = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
                 max_length: int | None = 512) -> None:
        super().__init__(tokenizer, train_on_what, max_length)
        if not getattr(tokenizer, "chat_template", None) or not hasattr(tokenizer, "apply_chat_template"):
            raise ConfigError(
                "renderer 'chat_template' needs a tokenizer with a chat template, and this one has none.",
                hint="Use renderer: role_colon (or auto) for base models.",
            )
        self._specials = _special_token_strings(tokenizer)
        self._eot_text, self._eot_id = self._probe_end_of_turn()

    def __getstate__(self) -> dict[str, Any]:
        # the compiled template is rebuilt on first use (datasets.map pickles the renderer to its workers)
        return {k: v for k, v in self.__dict__.items() if k != "_template"}

    def _compiled_template(self) -> Any:
        """The tokenizer's template compiled once and rendered directly, or None.

        ``apply_chat_template`` re-normalises every message and the special-token map on
        each call, which costs as much as rendering the template itself. We render our
        own plain ``{"role", "content"}`` string messages with transformers' compiled
        template and the same variables, and use that only after checking, on probe
        conversations, that it gives exactly what ``apply_chat_template`` gives.
        """
        if "_template" in self.__dict__:
            return self._template
        self._template = None
        template = getattr(self.tokenizer, "chat_template", None)
        if not isinstance(template, str):
            return None
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template, _plain_template_data

            compiled = _compile_jinja_template(template)
            variables = _plain_template_data(dict(self.tokenizer.special_tokens_map))

            def render(messages: list[dict], generation_prompt: bool) -> str:
                return compiled.render(messages=messages, tools=None, documents=None,
                                       add_generation_prompt=generation_prompt, **variables)

            probes = [[{"role": "user", "content": "Kitchen probe"}],
                      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " two words "},
                       {"role": "assistant", "content": "Yes.\n"}, {"role": "user", "content": "again"}]]
            for probe in probes:
                for gen in (False, True):
                    if render([dict(m) for m in probe], gen) != self.tokenizer.apply_chat_template(
                            [dict(m) for m in probe], tokenize=False, add_generation_prompt=gen):
                        return None
        except Exception:  # noqa: BLE001 - another transformers version or template: the public path
            return None
        self._template = render
        return render

    def _text(self, messages: Sequence[Mapping[str, Any]], generation_prompt: bool = False) -> str:
        fast = self._compiled_template()
        if fast is not None and all(len(m) == 2 and type(m.get("role")) is str and type(m.get("content")) is str
                                    for m in messages):
            try:
                return fast([{"role": m["role"], "content": m["content"]} for m in messages], generation_prompt)
            except Exception as exc:  # jinja raise_exception(), bad roles...
                raise DataError(f"The tokenizer's chat template rejected this conversation: {exc}") from exc
        try:
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # jinja raise_exception(), bad roles...
            raise DataError(f"The tokenizer's chat template rejected this conversation: {exc}") from exc
        if not isinstance(text, str):  # some versions return a list for batched input
            text = text[0]
        return text

    def _first_special(self, text: str, start: int, stop: int) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for s in self._specials:
            p = text.find(s, start, stop)
            if p >= 0 and (best is None or p < best[0]):
                best = (p, s)
        return best

    def _probe_end_of_turn(self) -> tuple[str | None, int | None]:
        eos_id = getattr(self.tokenizer, "eos_token_id", None)
        marker = "Kitchen probe reply 42"
        try:
            text = self._text([{"role": "user", "content": "Kitchen probe"}, {"role": "assistant", "content": marker}])
        except DataError:
            return None, eos_id
        at = text.rfind(marker)
        hit = self._first_special(text, at + len(marker), len(text)) if at >= 0 else None
        if hit is None:
            return None, eos_id
        ids = self._encode(hit[1])
        return hit[1], (ids[0] if len(ids) == 1 else eos_id)

    # Rendering is linear in the conversation's length: one template render and one
    # tokenization per conversation. Message boundaries come from a *plan* computed once
    # per sequence of roles, by running the exact prefix-by-prefix search on a copy of the
    # conversation whose contents are unique placeholders. A real conversation uses the plan
    # when its render equals the plan's skeleton with each placeholder replaced by the
    # content (checked on every row); a template that rewrites contents, or whose layout
    # depends on them, falls back to the exact search on the row itself.
    _PLACEHOLDER = "\ue000{}\ue001"
    _PLAN_CACHE_SIZE = 256

    def render(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[MessageSpan]]:
        return self.render_many([messages])[0]

    #: conversations per tokenizer call in :meth:`render_many`; chunks are pipelined
    _CHUNK = 64

    def render_many(self, conversations: Sequence[Sequence[Mapping[str, Any]]]) -> list[tuple[list[int], list[MessageSpan]]]:
        """:meth:`render` for many conversations, pipelined in chunks.

        A fast tokenizer encodes in Rust with the GIL released, so while one chunk is
        being encoded on a helper thread, this thread renders the next chunk's template
        and maps the previous chunk's spans: the Python and the Rust halves of the work
        overlap instead of taking turns.
        """
        convs = list(conversations)
        if len(convs) <= self._CHUNK:
            layouts = self._lay_out(convs)
            return self._spans(layouts, self._tokenize_many([t for _, t, _ in layouts]))
        from concurrent.futures import ThreadPoolExecutor

        out: list[tuple[list[int], list[MessageSpan]]] = []
        with ThreadPoolExecutor(1, thread_name_prefix="kitchen-encode") as pool:
            pending = None
            for k in range(0, len(convs), self._CHUNK):
                layouts = self._lay_out(convs[k:k + self._CHUNK])
                job = pool.submit(self._tokenize_many, [t for _, t, _ in layouts])
                if pending is not None:
                    out += self._spans(pending[0], pending[1].result())
                pending = (layouts, job)
            out += self._spans(pending[0], pending[1].result())
        return out

    def _lay_out(self, conversations: Sequence[Sequence[Mapping[str, Any]]]) -> list[tuple[list[dict], str, list]]:
        """Per conversation: its messages, its rendered text and each message's character span."""
        layouts = []
        for messages in conversations:
            msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
            full_text = self._text(msgs)
            char_spans = self._planned_spans(msgs, full_text)
            if char_spans is None:
                char_spans = self._char_spans(msgs, full_text)
            layouts.append((msgs, full_text, char_spans))
        return layouts

    @staticmethod
    def _spans(layouts: list[tuple[list[dict], str, list]], encoded: list) -> list[tuple[list[int], list[MessageSpan]]]:
        """Character spans to token spans, with each text's tokens."""
        out = []
        for (msgs, _, char_spans), (full, to_token) in zip(layouts, encoded):
            spans = []
            for i, (m, (start, pos, action_end, seg_end)) in enumerate(zip(msgs, char_spans)):
                start_t = to_token(start, False)
                a_start = to_token(pos, False)
                a_end = to_token(action_end, True)
                end_t = to_token(seg_end, True)
                spans.append(MessageSpan(i, m["role"], start_t, max(a_start, start_t), max(a_end, a_start), max(end_t, a_end)))
            out.append((full, spans))
        return out

    def _planned_spans(self, msgs: list[dict], full_text: str) -> list[tuple[int, int, int, int]] | None:
        """Character spans from the cached plan for this role sequence, or None (use the exact search)."""
        if not hasattr(self, "_plans"):
            self._plans: dict[tuple[str, ...], Any] = {}
        roles = tuple(m["role"] for m in msgs)
        plan = self._plans.get(roles)
        if plan is None:
            if len(self._plans) >= self._PLAN_CACHE_SIZE:
                self._plans.pop(next(iter(self._plans)))
            holders = [self._PLACEHOLDER.format(i) for i in range(len(msgs))]
            if any(self._PLACEHOLDER[0] in m["content"] for m in msgs):
                return None
            try:
                ph_msgs = [{"role": r, "content": h} for r, h in zip(roles, holders)]
                skeleton = self._text(ph_msgs)
                spans = self._char_spans(ph_msgs, skeleton)
                # pieces of the skeleton between placeholders, and where each placeholder starts
                at = [skeleton.index(h) for h in holders]
                if at != sorted(at) or any(skeleton.count(h) != 1 for h in holders):
                    raise ValueError("placeholders repeated or reordered")
            except (ConfigError, DataError, ValueError):
                plan = False
            else:
                pieces, prev = [], 0
                for h, a in zip(holders, at):
                    pieces.append(skeleton[prev:a])
                    prev = a + len(h)
                pieces.append(skeleton[prev:])
                plan = (pieces, at, [len(h) for h in holders], spans)
            self._plans[roles] = plan
        if plan is False:
            return None
        pieces, at, hlen, spans = plan
        contents = [m["content"] for m in msgs]
        if any(self._PLACEHOLDER[0] in c for c in contents):
            return None
        expected = "".join(p + c for p, c in zip(pieces, contents)) + pieces[-1]
        if expected != full_text:
            return None
        # shift skeleton positions by the length difference of the placeholders before them
        shifts, total = [], 0
        for c, n in zip(contents, hlen):
            shifts.append(total)
            total += len(c) - n
        ends = [a + n for a, n in zip(at, hlen)]

        def real(x: int) -> int:
            k = bisect.bisect_right(ends, x)  # placeholders wholly before x
            if k < len(at) and at[k] <= x < ends[k]:  # inside placeholder k: its start or its end
                return at[k] + shifts[k] + (0 if x == at[k] else len(contents[k]))
            return x + (shifts[k] if k < len(at) else total)

        return [tuple(real(x) for x in span) for span in spans]

    def _tokenize_many(self, texts: list[str]):
        """Per text: its tokens and a map from a character boundary to a token index.

        A token straddling the boundary (BPE merged across it) counts as inside the span
        on both sides. Fast tokenizers give offsets in one batched call; others re-encode prefixes.
        """
        backend = getattr(self.tokenizer, "backend_tokenizer", None) if getattr(self.tokenizer, "is_fast", False) else None
        if backend is not None and texts:
            # the Rust tokenizer directly: transformers' per-encoding dict conversion costs as much as encoding
            encodings = backend.encode_batch(texts, add_special_tokens=False)
            out = []
            for text, enc in zip(texts, encodings):
                ids, offsets = enc.ids, enc.offsets
                starts = [a for a, _ in offsets]
                ends = [b for _, b in offsets]
                if starts == sorted(starts) and ends == sorted(ends):
                    out.append((list(ids), _offset_index(len(text), len(ids), starts, ends)))
                else:
                    out.append(self._slow_index(text))
            return out
        return [self._slow_index(t) for t in texts]

    def _slow_index(self, text: str):
        full = self._encode(text)
        n_chars = len(text)
        cache: dict[int, int] = {}

        def to_token_slow(c: int, end: bool) -> int:
            if c <= 0:
                return 0
            if c >= n_chars:
                return len(full)
            if c not in cache:
                part = self._encode(text[:c])
                lcp = _common_prefix_len(part, full)
                cache[c] = lcp if lcp == len(part) else -lcp - 1
            v = cache[c]
            if v >= 0:
                return v
            lcp = -v - 1
            return lcp + 1 if end else lcp

        return full, to_token_slow

    def _char_spans(self, msgs: list[dict], full_text: str) -> list[tuple[int, int, int, int]]:
        """Exact character spans ``(start, action_start, action_end, end)`` per message, by
        rendering each prefix of the conversation (quadratic; the plan makes it once per role sequence)."""
        def not_prefix(what: str) -> ConfigError:
            return ConfigError(
                f"The tokenizer's chat template is not prefix-stable: rendering {what} is not a prefix "
                "of rendering the whole conversation, so message boundaries (and training weights) "
                "cannot be found exactly.",
                hint="Use renderer: role_colon, or a tokenizer whose template renders earlier turns unchanged.",
            )

        spans: list[tuple[int, int, int, int]] = []
        prev_end = 0
        for i, m in enumerate(msgs):
            upto = full_text if i == len(msgs) - 1 else self._text(msgs[: i + 1])
            if not full_text.startswith(upto) or len(upto) < prev_end:
                raise not_prefix(f"the first {i + 1} message(s)")
            seg_end = len(upto)
            header_end = prev_end
            if m["role"] == "assistant":
                try:
                    gen = self._text(msgs[:i], generation_prompt=True) if i > 0 else None
                except DataError:
                    gen = None
                if gen is not None:
                    if not full_text.startswith(gen) or not prev_end <= len(gen) <= seg_end:
                        raise not_prefix(f"the first {i} message(s) plus the generation prompt")
                    header_end = len(gen)
            content = m["content"]
            if content:
                pos = full_text.rfind(content, header_end, seg_end)
                if pos < 0 and content.strip():
                    content = content.strip()
                    pos = full_text.rfind(content, header_end, seg_end)
                if pos < 0:
                    raise ConfigError(
                        f"The tokenizer's chat template changes the content of message {i} ({m['role']}), "
                        "so its tokens cannot be located for training weights.",
                        hint="Use renderer: role_colon.",
                    )
                content_end = pos + len(content)
            else:  # empty content: the action is just the end-of-turn marker
                p = full_text.find(self._eot_text, header_end, seg_end) if self._eot_text else -1
                pos = content_end = p if p >= 0 else seg_end
            hit = self._first_special(full_text, content_end, seg_end)
            action_end = hit[0] + len(hit[1]) if hit else seg_end
            spans.append((prev_end, pos, action_end, seg_end))
            prev_end = seg_end
        return spans

    def build_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        return self._encode(self._text(_check_messages(messages), generation_prompt=True))

    @property
    def stop_sequences(self) -> list[int]:
        ids: list[int] = []
        for t in (self._eot_id, getattr(self.tokenizer, "eos_token_id", None)):
            if t is not None and t not in ids:
                ids.append(int(t))
        return ids

    def parse_response(self, tokens: Sequence[int]) -> str:
        stops = set(self.stop_sequences)
        out: list[int] = []
        for t in tokens:
            if t in stops:
                break
            out.append(t)
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()


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

    def build_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        tokens, _ = self.render(_check_messages(messages))
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


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def auto_renderer(tokenizer: Any, train_on_what: str | TrainOnWhat = "last_assistant_message",
                  max_length: int | None = 512) -> Renderer:
    """The tokenizer's own chat template when it has one, else the plain ``role: text`` layout."""
    cls = ChatTemplateRenderer if has_chat_template(tokenizer) else RoleColonRenderer
    return cls(tokenizer, train_on_what, max_length)


def build_renderer(name: str, tokenizer: Any, train_on_what: str | TrainOnWhat = "last_assistant_message",
                   max_length: int | None = 512) -> Renderer:
    """A built-in renderer by name: ``auto``, ``chat_template`` or ``role_colon`` (no plugins)."""
    if name not in RENDERERS:
        raise ConfigError(
            f"Unknown renderer {name!r}; allowed values: {', '.join(RENDERERS)}." + did_you_mean(str(name), RENDERERS)
        )
    cls = {"auto": auto_renderer, "chat_template": ChatTemplateRenderer, "role_colon": RoleColonRenderer}[name]
    return cls(tokenizer, train_on_what, max_length)
