"""Built-in renderers by name (``renderer=`` in a recipe): auto, chat_template, role_colon."""

from __future__ import annotations

from typing import Any

from kitchen.errors import ConfigError, did_you_mean
from kitchen.train.renderers.base import Renderer
from kitchen.train.renderers.chat_template import ChatTemplateRenderer, has_chat_template
from kitchen.train.renderers.role_colon import RoleColonRenderer
from kitchen.train.train_on_what import TrainOnWhat

RENDERERS: tuple[str, ...] = ("auto", "chat_template", "role_colon")


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
