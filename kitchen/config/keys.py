"""Every key any known workflow accepts: the vocabulary a did-you-mean draws from.

Both the schema validator (:mod:`kitchen.config.spec`) and the composer
(:mod:`kitchen.config.compose`) suggest the nearest key across *all* workflows, so a key
misspelt for one workflow is still found when it belongs to another. It lives on its own,
below both, because it needs only the workflow registry.
"""

from __future__ import annotations

from kitchen.errors import ConfigError


def every_key() -> list[str]:
    """Every key of every known workflow's schema (did-you-mean spans them all)."""
    from kitchen.workflows import get_workflow, workflow_names

    keys: set[str] = set()
    for name in workflow_names():
        try:
            keys.update(get_workflow(name).config.model_fields)
        except ConfigError:
            continue
    return sorted(keys)


__all__ = ["every_key"]
