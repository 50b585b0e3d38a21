"""Workflows by name: the four built-ins plus any a plugin package registers.

A workflow is a plain module-level :class:`~kitchen.engine.ir.Workflow` value; nothing
registers itself. Names resolve through the plugin catalog (``kitchen.config.catalog``), so a
package adds one with a ``crucible_kitchen.workflows`` entry point.
"""

from __future__ import annotations

import dataclasses

from kitchen.engine.ir import Workflow
from kitchen.errors import ConfigError


def get_workflow(name: str) -> Workflow:
    from kitchen.config.catalog import catalog

    entry = catalog().entry("workflows", name)
    workflow = entry.load()
    if not isinstance(workflow, Workflow):
        raise ConfigError(
            f"The workflow entry point '{name}' of {entry.source} ({entry.target}) is a {type(workflow).__name__}, "
            "not a kitchen.engine.ir.Workflow. Point it at a module-level Workflow(...) value."
        )
    if workflow.name != name:
        workflow = dataclasses.replace(workflow, name=name)
    return dataclasses.replace(workflow, source=entry.source) if workflow.source != entry.source else workflow


def workflow_names() -> list[str]:
    from kitchen.config.catalog import catalog

    return catalog().names("workflows")


def workflow_for_key(key: str) -> list[tuple[str, str]]:
    """(workflow, source) for every known workflow whose schema has ``key`` (for error messages)."""
    out = []
    for name in workflow_names():
        try:
            wf = get_workflow(name)
        except ConfigError:
            continue
        if key in wf.config.model_fields:
            out.append((name, wf.source))
    return out
