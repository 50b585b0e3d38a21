"""OpenAI-style message lists: the one validator, and small pure helpers over them.

:func:`message_problem` is the one check of a message list (renderers, the SFT /
preference / distillation row checks and the teacher rows all use it); data *formats*
(content parts, ShareGPT turns) are normalised to this shape first by
:mod:`kitchen.train.formats`, which reports row-level field paths of its own.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kitchen.errors import DataError

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


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


def check_messages(messages: Any) -> list[dict]:
    """``messages`` copied as plain dicts, or a DataError saying what is wrong with them."""
    problem = message_problem(messages)
    if problem:
        raise DataError(f"Invalid conversation: {problem}.")
    return [dict(m) for m in messages]


def prompt_part(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The conversation up to (not including) the last assistant message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return [dict(m) for m in messages[:i]]
    return [dict(m) for m in messages]


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last user turn (what a preview shows as the prompt)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""
