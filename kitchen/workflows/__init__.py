"""Workflow registry. Built-in workflows register themselves on first lookup."""

from __future__ import annotations

from typing import Callable

from kitchen.engine.ir import Workflow
from kitchen.errors import ConfigError, did_you_mean

_WORKFLOWS: dict[str, Workflow] = {}
_BUILTINS = ("supervised", "reinforcement", "preference", "distillation")


def register_workflow(workflow: Workflow) -> Workflow:
    _WORKFLOWS[workflow.name] = workflow
    return workflow


def _load_builtins() -> None:
    import importlib

    for name in _BUILTINS:
        try:
            importlib.import_module(f"kitchen.workflows.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kitchen.workflows.{name}":
                raise


def get_workflow(name: str) -> Workflow:
    _load_builtins()
    try:
        return _WORKFLOWS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown workflow '{name}'.{did_you_mean(name, list(_WORKFLOWS))} Registered workflows: {', '.join(sorted(_WORKFLOWS))}."
        ) from None


def workflow_names() -> list[str]:
    _load_builtins()
    return sorted(_WORKFLOWS)


Builder = Callable[[], Workflow]
