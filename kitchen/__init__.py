"""Crucible Kitchen: post-training from YAML recipes, from the command line or from Python.

The Python facade does what the CLI does, through the same preflight::

    import kitchen

    kitchen.recipes()                                   # {name: Recipe}
    kitchen.describe("sl_basic")                        # the recipe's workflow, keys and stage tree
    kitchen.validate("sl_basic", overrides=["adapters=noop"])
    result = kitchen.run("sl_basic", overrides=["adapters=noop", "max_steps=20"])
    result.status, result.run_dir, result.step, result.metrics

A mistake in the input raises :class:`kitchen.errors.KitchenError` (ConfigError,
DataError, ...) carrying the same one-paragraph message the CLI prints. Importing
``kitchen`` is cheap: nothing heavy loads until a function is called.

A plugin (a workflow, stage, env, evaluator, renderer or sink of its own) imports from
:mod:`kitchen.api`, the one front door. Its names are reachable from here as well
(``kitchen.Workflow``, ``from kitchen import Stage``), loaded on first use, so importing
``kitchen`` alone still loads none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from kitchen.config.recipes import Recipe
    from kitchen.config.spec import RunSpec
    from kitchen.engine.ir import Workflow
    from kitchen.runs.execute import RunResult

__all__ = ["Description", "describe", "recipes", "run", "validate"]


def _overrides(recipe: str | None, overrides: Sequence[str]) -> list[str]:
    return ([f"recipe={recipe}"] if recipe else []) + [str(o) for o in overrides]


def run(recipe: str | None = None, overrides: Sequence[str] = (), recipes_dir: Sequence[str] = ()) -> "RunResult":
    """Run a recipe to the end; returns its status, run dir, step and final metrics."""
    from kitchen.runs.execute import execute_prepared
    from kitchen.runs.preflight import compose_spec, preflight

    spec, workflow, _, _ = compose_spec(_overrides(recipe, overrides), recipes_dir)
    return execute_prepared(preflight(spec, workflow))


def validate(recipe: str | None = None, overrides: Sequence[str] = (), recipes_dir: Sequence[str] = ()) -> "RunSpec":
    """Everything `kitchen run` checks before its first step; returns the validated spec."""
    from kitchen.runs.preflight import compose_spec, preflight

    spec, workflow, _, _ = compose_spec(_overrides(recipe, overrides), recipes_dir)
    return preflight(spec, workflow).spec


def recipes(recipes_dir: Sequence[str] = ()) -> dict[str, "Recipe"]:
    """Every recipe by name: bundled, from installed plugins, and from ``recipes_dir``."""
    from kitchen.config.recipes import discover

    return discover(recipes_dir)


@dataclass
class Description:
    recipe: "Recipe"
    workflow: "Workflow"
    spec: "RunSpec"
    keys: list[tuple[str, str, Any, str]]  # (name, type, default, description) of the workflow's schema


def describe(name: str, recipes_dir: Sequence[str] = ()) -> Description:
    """A recipe's workflow, its composed spec, and every key of the workflow's schema."""
    from kitchen.config.spec import describe_fields
    from kitchen.runs.preflight import compose_spec

    spec, workflow, _, found = compose_spec([f"recipe={name}"], recipes_dir)
    return Description(found[name], workflow, spec, describe_fields(workflow.config))


def __getattr__(name: str) -> Any:
    """``kitchen.<name>`` for a name of :mod:`kitchen.api`, imported on first use (PEP 562)."""
    if not name.startswith("_") and find_spec(f"{__name__}.{name}") is None:  # a submodule is the import system's
        from kitchen import api

        if name in api.__all__:
            value = globals()[name] = getattr(api, name)  # found once; later reads are plain attributes
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    from kitchen import api

    return sorted(set(globals()) | set(api.__all__))
