"""Small pure helpers over OpenAI-style message lists."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


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
