"""Hydra composition: config groups + recipes + overrides -> one DictConfig.

The primary config ``kitchen`` lives in the ConfigStore and points Hydra's search path
at the bundled ``conf/`` folder; recipes are registered into the ``recipe`` group (see
``recipes.py``). ``compose`` is side-effect free (``--cfg``, ``validate``,
``describe``); ``launch`` goes through Hydra's real run/multirun machinery via
hydra-zen, so sweepers, launchers and ``hydra.*`` overrides behave as Hydra documents.
Hydra's exceptions are translated into one-paragraph ConfigErrors.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from kitchen.config import recipes as recipes_mod
from kitchen.errors import ConfigError, did_you_mean

PRIMARY = "kitchen"
VERSION_BASE = "1.3"
GROUPS = ("recipe", "workflow", "adapters", "telemetry")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("kitchen_data"):
        OmegaConf.register_new_resolver(
            "kitchen_data", lambda rel: str(recipes_mod.bundled_data_dir() / rel), use_cache=False
        )


_FOUND: dict[str, recipes_mod.Recipe] = {}


def describe_source(recipe_name: str | None) -> str:
    """Where a composed config came from, for error messages."""
    recipe = _FOUND.get(recipe_name or "")
    if recipe is None:
        return "the composed config"
    return f"recipe {recipe.name} from {recipe.path}, with command-line overrides"


def group_options(group: str) -> list[str]:
    folder = recipes_mod.bundled_conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def setup(recipe_dirs: Iterable[str | os.PathLike[str]] = ()) -> dict[str, recipes_mod.Recipe]:
    """Register the primary config, the resolvers and every recipe in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    register_resolvers()
    found = recipes_mod.discover(recipe_dirs)
    _FOUND.clear()
    _FOUND.update(found)
    cs = ConfigStore.instance()
    cs.store(name=PRIMARY, node=primary_node())
    cs.store(name="kitchen_defaults", node=OmegaConf.create(spec_defaults()))
    for recipe in found.values():
        body = dict(recipe.body)
        body["recipe"] = recipe.name
        cs.store(group="recipe", name=recipe.name, package="_global_", node=OmegaConf.create(body))
    return found


def primary_node() -> dict[str, Any]:
    conf = recipes_mod.bundled_conf_dir().resolve()
    return {"defaults": ["kitchen_defaults", "config", "_self_"], "hydra": {"searchpath": [f"file://{conf}"]}}


def spec_defaults() -> dict[str, Any]:
    """Every optional RunSpec field at its default, composed first, so any hyperparameter
    can be overridden as ``key=value`` without Hydra's ``+`` and shows up in ``--cfg``."""
    from kitchen.config.spec import RunSpec

    skip = {"workflow", "adapters", "telemetry"}
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in RunSpec.model_fields.items()
        if name not in skip and not field.is_required()
    }


def compose(overrides: list[str], recipe_dirs: Iterable[str] = (), *, found: dict | None = None) -> DictConfig:
    """Compose without running anything (hydra.* interpolations are not available)."""
    from hydra import compose as hydra_compose
    from hydra import initialize

    found = found if found is not None else setup(recipe_dirs)
    check_override_syntax(overrides)  # issue 13
    try:
        with initialize(config_path=None, version_base=VERSION_BASE, job_name="kitchen"):
            return hydra_compose(config_name=PRIMARY, overrides=list(overrides))
    except Exception as exc:  # noqa: BLE001 - translated below
        raise translate(exc, overrides, found) from None


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolve interpolations; a broken one becomes a ConfigError naming the key."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"Could not resolve the config: {_first_line(exc)}") from None
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return data


def launch(
    overrides: list[str],
    task: Callable[[DictConfig], Any],
    *,
    multirun: bool,
    recipe_dirs: Iterable[str] = (),
    found: dict | None = None,
) -> Any:
    """Run ``task`` through Hydra (single run or multirun sweep)."""
    from hydra_zen import launch as zen_launch

    found = found if found is not None else setup(recipe_dirs)
    check_override_syntax(overrides)  # issue 13
    try:
        return zen_launch(
            primary_node(),
            task,
            overrides=list(overrides),
            multirun=multirun,
            version_base=VERSION_BASE,
            config_name=PRIMARY,
            job_name="kitchen",
            with_log_configuration=True,
        )
    except Exception as exc:  # noqa: BLE001
        from kitchen.errors import KitchenError

        if isinstance(exc, KitchenError):
            raise
        if _is_hydra_error(exc):
            raise translate(exc, overrides, found) from None
        if isinstance(exc, OSError) and exc.filename:  # issue 13: Hydra creating hydra.run.dir (= run_dir)
            raise run_dir_error(exc) from None
        raise


# --- issue 13: malformed overrides and an uncreatable run_dir, as one paragraph ----------
_HUGE_INT = re.compile(r"(?<![\w.])[-+]?\d{4000,}(?![\w.])")


def check_override_syntax(overrides: Iterable[str]) -> None:
    """Catch what Hydra's parser turns into a bare ValueError (a traceback): an override
    with an empty key (``=3``) and an integer too long for Python to parse (> 4300 digits)."""
    for item in overrides:
        if item.startswith("-"):
            continue  # an option Typer left in place
        key, eq, value = item.partition("=")
        if eq and not key.lstrip("+~").strip():
            raise ConfigError(
                f"Could not parse the override '{item[:60]}': the key before '=' is empty. "
                "Use key=value, group=choice, +key=value or ~key."
            )
        if eq and _HUGE_INT.search(value):
            digits = max(len(m.group(0).lstrip("+-")) for m in _HUGE_INT.finditer(value))
            raise ConfigError(
                f"The override '{key}' holds an integer with {digits} digits, more than a number can hold here "
                "(at most 4000 digits). Pass a smaller value."
            )


def run_dir_error(exc: OSError) -> ConfigError:
    """Hydra could not create the run folder: say which path and why."""
    from pathlib import Path

    from kitchen.errors import RunDirError
    from kitchen.lifecycle import check_run_dir_path

    path = Path(str(exc.filename))
    try:
        check_run_dir_path(path)
    except RunDirError as specific:
        return specific  # type: ignore[return-value]
    return RunDirError(f"Cannot create run_dir {path}: {exc.strerror or exc}. Choose a folder you can write to.")  # type: ignore[return-value]


def _recipe_choosing(group: str, choice: str, found: dict[str, recipes_mod.Recipe]) -> recipes_mod.Recipe | None:
    """The recipe whose defaults list picks ``group: choice`` (for naming the culprit file)."""
    for recipe in found.values():
        if getattr(recipe, group, None) == choice:
            return recipe
    return None


def _is_hydra_error(exc: BaseException) -> bool:
    mod = type(exc).__module__
    return mod.startswith(("hydra", "omegaconf"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate(exc: BaseException, overrides: list[str], found: dict[str, recipes_mod.Recipe]) -> ConfigError:
    """Turn a Hydra/OmegaConf exception into a one-paragraph ConfigError."""
    text = str(exc)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing:
        group, choice = missing.group(1), missing.group(2)
        options = sorted(found) if group == "recipe" else group_options(group)
        from_cli = any(o.split("=", 1)[0].lstrip("+~") == group and o.endswith(f"={choice}") for o in overrides)
        if group == "recipe":
            return ConfigError(
                f"Unknown recipe '{choice}'.{did_you_mean(choice, options)} Available recipes: {', '.join(options)}. "
                f"Add your own with --recipes-dir DIR or {recipes_mod.RECIPES_ENV}."
            )
        if not from_cli:
            culprit = _recipe_choosing(group, choice, found)
            if culprit is not None:
                return ConfigError(
                    f"Recipe '{culprit.name}' ({culprit.path}) names {group} '{choice}', which does not exist.{did_you_mean(choice, options)} "
                    f"Available {group} choices: {', '.join(options)}."
                )
        return ConfigError(
            f"Unknown {group} choice '{choice}'.{did_you_mean(choice, options)} Available: {', '.join(options)}."
        )
    not_in = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if not_in:
        key = not_in.group(1)
        from kitchen.config.spec import RunSpec

        hint = did_you_mean(key.split(".")[-1], list(RunSpec.model_fields))
        return ConfigError(
            f"Unknown key '{key}' on the command line.{hint} "
            "Run `kitchen describe RECIPE` to see every hyperparameter; use +key=value only to add keys a custom stage reads."
        )
    if type(exc).__name__ == "OverrideParseException" or "Error parsing override" in text:
        return ConfigError(f"Could not parse the command-line overrides: {_first_line(exc)} Use key=value, group=choice, +key=value or ~key.")
    for recipe in found.values():
        if str(recipe.path) in text or f"recipe/{recipe.name}" in text:
            return ConfigError(f"Recipe '{recipe.name}' ({recipe.path}) could not be composed: {_first_line(exc)}")
    return ConfigError(f"Hydra could not compose the config: {_first_line(exc)}")
