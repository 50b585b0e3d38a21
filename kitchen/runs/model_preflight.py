"""The model half of preflight: everything about ``model=`` that can fail, checked without weights.

``kitchen validate`` calls :func:`check_models`; the engine's preflight can call it too
(or :func:`kitchen.adapters.local.models.resolve_model` directly). It resolves ``model=``
and ``teacher=`` (hub ids: the local cache, else a metadata call to the hub; offline
with no cached copy is an error naming ``hf download ID``) when the adapters declare
``local_models`` (the backend loads them on this machine), reads ``chat_template=`` and
checks the ``push_to_hub=`` repo id. No torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kitchen.errors import ConfigError

if TYPE_CHECKING:
    from kitchen.config.spec import RunSpec


def check_models(spec: RunSpec) -> str:
    """Raise a KitchenError for a model problem; else a short description for the ok line."""
    from kitchen.adapters.local.models import read_chat_template, resolve_model

    notes = []
    if spec.chat_template:
        read_chat_template(spec.chat_template)
    repo = spec.push_to_hub
    if repo:
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(repo)
        except Exception as exc:  # noqa: BLE001 - HFValidationError
            raise ConfigError(f"push_to_hub='{repo}' is not a hub repo id: {exc}. Use org/name (e.g. me/my-model).") from None
        if "/" not in repo:
            raise ConfigError(f"push_to_hub='{repo}' needs an owner: use org/name (e.g. me/{repo}).")
    if not spec.adapters.local_models:  # a service names its own models: nothing here to resolve
        return ""
    res = resolve_model(spec.model, spec.model_revision, offline_ok=True)
    if res.kind == "hub":
        state = "cached" if res.path else "will be downloaded"
        notes.append(f"hub model {res.name}@{(res.commit or '?')[:12]} ({state})")
    teacher = getattr(spec, "teacher", None)  # a key of the distillation workflows' schema only
    if teacher:
        resolve_model(teacher, None, offline_ok=True)
    return ", ".join(notes)
