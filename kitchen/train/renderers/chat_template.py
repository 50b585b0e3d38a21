"""The chat-template renderer: the tokenizer's own Jinja template, with exact message spans.

Message boundaries are found by rendering the conversation incrementally (messages[:i]
vs messages[:i+1], and messages[:i] with the generation prompt for assistant headers)
and checking that each partial render is a prefix of the full one, so templates that
inject text (SmolLM2's default system prompt) are handled exactly. A template that
rewrites earlier turns (not prefix-stable) is refused with a clear error.
"""

from __future__ import annotations

import bisect
from typing import Any, Mapping, Sequence

from kitchen.errors import ConfigError, DataError
from kitchen.train.messages import check_messages
from kitchen.train.renderers.base import MessageSpan, Renderer
from kitchen.train.train_on_what import TrainOnWhat


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

    def build_prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> list[int]:
        if not tools and not any(m.get("tool_calls") for m in messages):
            return self._encode(self._text(check_messages(messages), generation_prompt=True))
        return self._encode(self._tool_text(messages, tools, generation_prompt=True))

    # -- tools: the template's own format when it has one (tools= of apply_chat_template)

    @property
    def native_tools(self) -> bool:  # type: ignore[override]
        """Whether the template renders ``tools=`` and assistant ``tool_calls`` itself (probed once)."""
        if "_native_tools" not in self.__dict__:
            self._native_tools = False
            probe_tool = {"type": "function", "function": {"name": "kitchen_probe_tool", "description": "probe",
                                                           "parameters": {"type": "object", "properties": {}}}}
            call = {"type": "function", "function": {"name": "kitchen_probe_call", "arguments": {}}}
            try:
                listed = self.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=[probe_tool],
                                                            tokenize=False, add_generation_prompt=True)
                called = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "tool", "content": "42"}], tokenize=False)
                self._native_tools = "kitchen_probe_tool" in str(listed) and "kitchen_probe_call" in str(called)
            except Exception:  # noqa: BLE001 - a template without tool support: the text fallback
                self._native_tools = False
        return self._native_tools

    def _tool_text(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None,
                   generation_prompt: bool = False) -> str:
        from kitchen.train.tools import Tool

        if not self.native_tools:
            return self._text(check_messages(self.tool_messages(messages, tools)), generation_prompt=generation_prompt)
        schemas = [t.schema if isinstance(t, Tool) else dict(t) for t in tools or []] or None
        try:
            text = self.tokenizer.apply_chat_template([dict(m) for m in messages], tools=schemas, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as exc:
            raise DataError(f"The tokenizer's chat template rejected this conversation: {exc}") from exc
        return text if isinstance(text, str) else text[0]

    def build_continuation(self, history: Sequence[Mapping[str, Any]], assistant: Mapping[str, Any],
                           new_messages: Sequence[Mapping[str, Any]], action: Sequence[int],
                           tools: Sequence[Any] | None = None) -> list[int] | None:
        """The template's text between the assistant turn's end-of-turn and the next generation
        prompt (its trailer, the new messages, the header), when rendering with the new messages
        extends rendering without them; the end-of-turn token first when the action lacks it."""
        conversation = list(history) + [dict(assistant)]
        base = self._tool_text(conversation, tools)
        full = self._tool_text(conversation + [dict(m) for m in new_messages], tools, generation_prompt=True)
        if not full.startswith(base) or not self._eot_text or self._eot_text not in base:
            return None
        trailer = base[base.rfind(self._eot_text) + len(self._eot_text):]
        tokens = [] if action and action[-1] in self.stop_sequences else ([self._eot_id] if self._eot_id is not None else [])
        return tokens + self._encode(trailer + full[len(base):])

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


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")
