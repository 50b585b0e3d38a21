"""Finding recipes: the bundled ones plus any user recipe directories.

A recipe is a YAML file whose name is the recipe's name. It is registered in Hydra's
ConfigStore as an option of the ``recipe`` group with package ``_global_``, so it may
``override /workflow: ...`` and ``override /adapters: ...`` in its defaults list and
set any top-level hyperparameter. Later directories win over earlier ones, so a user
recipe may shadow a bundled one of the same name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf._utils import get_yaml_loader

from kitchen.errors import ConfigError

RECIPES_ENV = "KITCHEN_RECIPES_PATH"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def bundled_conf_dir() -> Path:
    return PACKAGE_ROOT / "_conf"


def bundled_recipes_dir() -> Path:
    return PACKAGE_ROOT / "_recipes"


def bundled_data_dir() -> Path:
    return (bundled_recipes_dir() / "data").resolve()


@dataclass
class Recipe:
    name: str
    path: Path
    body: dict[str, Any]
    description: str = ""
    workflow: str = "supervised"
    adapters: str = "local"
    header: list[str] = field(default_factory=list)
    source: str = "kitchen"  # kitchen, a plugin package, or the user directory it came from


def recipe_dirs(extra: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Bundled recipes first, then KITCHEN_RECIPES_PATH entries, then --recipes-dir options."""
    dirs = [bundled_recipes_dir()]
    env = os.environ.get(RECIPES_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    for d in dirs[1:]:
        if not d.is_dir():
            raise ConfigError(
                f"Recipe directory '{d}' does not exist (from --recipes-dir or {RECIPES_ENV}). "
                "Point it at a folder of recipe YAML files."
            )
    return dirs


def _default_choice(defaults: list[Any], group: str) -> str | None:
    for entry in defaults or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if key.replace("override ", "").strip().lstrip("/") == group:
                    return str(value)
    return None


def load_recipe(path: Path) -> Recipe:
    text = path.read_text(encoding="utf-8")
    try:
        # OmegaConf's loader: YAML 1.2 floats (``5e-4`` is a number, as in Hydra's own files).
        body = yaml.load(text, Loader=get_yaml_loader()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"Recipe file {path}{where} is not valid YAML: {problem}. "
            "A recipe is a YAML mapping of hyperparameters, optionally with a defaults list "
            "such as `- override /workflow: supervised`."
        ) from None
    if not isinstance(body, dict):
        raise ConfigError(f"Recipe file {path} must hold a YAML mapping of keys to values, not {type(body).__name__}.")
    header = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    defaults = body.get("defaults", [])
    if not isinstance(defaults, list):
        raise ConfigError(f"Recipe file {path}: 'defaults' must be a list, e.g. `- override /workflow: supervised`.")
    return Recipe(
        name=path.stem,
        path=path,
        body=body,
        description=str(body.get("description", "")),
        workflow=_default_choice(defaults, "workflow") or "supervised",
        adapters=_default_choice(defaults, "adapters") or "local",
        header=[h for h in header if not h.startswith("@package")],
    )


def discover(extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> dict[str, Recipe]:
    """Every recipe by name: bundled, then installed plugins', then KITCHEN_RECIPES_PATH and --recipes-dir.

    A later directory's recipe shadows an earlier one of the same name (a user may
    override a bundled recipe); two plugins giving the same name is an error naming both.
    """
    from kitchen.config.catalog import plugin_recipe_dirs

    dirs = recipe_dirs(extra_dirs)
    plugins = plugin_recipe_dirs()
    from_plugins = {source for source, _ in plugins}
    sources: list[tuple[str, Path]] = [("kitchen", dirs[0])] + plugins + [(str(d), d) for d in dirs[1:]]
    found: dict[str, Recipe] = {}
    for source, directory in sources:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
            recipe = load_recipe(path)
            recipe.source = source
            earlier = found.get(recipe.name)
            if earlier is not None and {earlier.source, source} <= from_plugins and earlier.source != source:
                raise ConfigError(
                    f"Two plugins provide the recipe '{recipe.name}': {earlier.source} ({earlier.path}) and {source} ({path}). "
                    "Uninstall one, or copy the one you want into a --recipes-dir under another name."
                )
            found[recipe.name] = recipe
    return found
