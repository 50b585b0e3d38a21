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

The package, one part per module:

* :mod:`.base`: the :class:`Renderer` contract, :class:`RenderedExample`, :class:`MessageSpan`;
* :mod:`.chat_template`: :class:`ChatTemplateRenderer`, the tokenizer's own Jinja chat
  template with exact, prefix-checked message spans;
* :mod:`.role_colon`: :class:`RoleColonRenderer`, for base models without a template:
  ``User: ...\\n\\nAssistant: ...<eos>\\n\\n``;
* :mod:`.build`: the built-in renderers by name (:func:`build_renderer`).

Which tokens train is :class:`~kitchen.train.train_on_what.TrainOnWhat`; the message-list
check is :func:`kitchen.train.messages.message_problem`. Both are re-exported here, so
``from kitchen.train.renderers import ...`` (plugins, the cookbook) keeps its names.

Pure Python: the only tokenizer surface used is ``encode``/``decode``/``eos_token_id``
(plus ``apply_chat_template`` for the chat-template renderer).
"""

from __future__ import annotations

from kitchen.train.messages import ROLES, message_problem
from kitchen.train.renderers.base import MessageSpan, RenderedExample, Renderer
from kitchen.train.renderers.build import RENDERERS, auto_renderer, build_renderer
from kitchen.train.renderers.chat_template import ChatTemplateRenderer, has_chat_template
from kitchen.train.renderers.role_colon import RoleColonRenderer
from kitchen.train.train_on_what import TRAIN_ON_WHAT, TrainOnWhat, parse_train_on_what

__all__ = [
    "RENDERERS", "ROLES", "TRAIN_ON_WHAT", "ChatTemplateRenderer", "MessageSpan", "RenderedExample", "Renderer",
    "RoleColonRenderer", "TrainOnWhat", "auto_renderer", "build_renderer", "has_chat_template", "message_problem",
    "parse_train_on_what",
]
