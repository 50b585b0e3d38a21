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
from kitchen.config.keys import every_key
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
_BROKEN_WORKFLOWS: dict[str, str] = {}  # workflow name -> why it could not be loaded


def describe_source(recipe_name: str | None) -> str:
    """Where a composed config came from, for error messages."""
    recipe = _FOUND.get(recipe_name or "")
    if recipe is None:
        return "the composed config"
    return f"recipe {recipe.name} from {recipe.path}, with command-line overrides"


def group_options(group: str) -> list[str]:
    if group == "workflow":
        from kitchen.workflows import workflow_names

        return workflow_names()
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
    store_workflows(cs)
    for recipe in found.values():
        body = dict(recipe.body)
        body["recipe"] = recipe.name
        cs.store(group="recipe", name=recipe.name, package="_global_", node=OmegaConf.create(body))
    return found


def primary_node() -> dict[str, Any]:
    conf = recipes_mod.bundled_conf_dir().resolve()
    return {"defaults": ["kitchen_defaults", "config", "_self_"], "hydra": {"searchpath": [f"file://{conf}"]}}


def spec_defaults(model: Any = None, only: Iterable[str] | None = None) -> dict[str, Any]:
    """Optional fields of ``model`` (default: the common RunSpec) at their defaults.

    Composed before the recipe, so any hyperparameter of the chosen workflow can be
    overridden as ``key=value`` without Hydra's ``+`` and shows up in ``--cfg``; a key of
    another workflow is not in the composed config, so overriding it is an error.
    """
    from kitchen.config.spec import RunSpec

    model = model or RunSpec
    skip = {"workflow", "adapters", "telemetry"}
    keep = set(only) if only is not None else None
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if name not in skip and not field.is_required() and (keep is None or name in keep)
    }


def warn_broken_workflows(chosen: str | None = None) -> None:
    """One warning per plugin workflow that could not be loaded (not for the one a run chose: that is its error)."""
    from kitchen.config.catalog import catalog, warn_once

    for name, why in _BROKEN_WORKFLOWS.items():
        if name != chosen:
            warn_once(f"plugin {catalog().source('workflows', name)} is skipped: {why}", key=catalog().source("workflows", name))


def store_workflows(cs: Any) -> None:
    """Each known workflow becomes a ``workflow`` group option carrying its own keys' defaults.

    A plugin workflow that fails to load is one warning naming its package; choosing it
    later reports why.
    """
    from kitchen.config.spec import own_keys
    from kitchen.errors import KitchenError
    from kitchen.workflows import get_workflow, workflow_names

    _BROKEN_WORKFLOWS.clear()
    for name in workflow_names():
        try:
            workflow = get_workflow(name)
        except KitchenError as exc:
            # an error if a run chooses it, else one warning per package (warn_broken_workflows)
            _BROKEN_WORKFLOWS[name] = exc.render()
            continue
        node = {"workflow": {"name": name}, **spec_defaults(workflow.config, own_keys(workflow.config))}
        cs.store(group="workflow", name=name, package="_global_", node=OmegaConf.create(node))


def compose(overrides: list[str], recipe_dirs: Iterable[str] = (), *, found: dict | None = None) -> DictConfig:
    """Compose without running anything (hydra.* interpolations are not available)."""
    from hydra import compose as hydra_compose
    from hydra import initialize

    found = found if found is not None else setup(recipe_dirs)
    check_override_syntax(overrides)
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
    check_override_syntax(overrides)
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
    except Exception as exc:
        from kitchen.errors import KitchenError

        if isinstance(exc, KitchenError):
            raise
        if _is_hydra_error(exc):
            raise translate(exc, overrides, found) from None
        if isinstance(exc, OSError) and exc.filename:  # Hydra creating hydra.run.dir (= run_dir)
            raise run_dir_error(exc) from None
        raise


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Compositions that together try every swept value once: the base (first value of
    each sweep) plus one composition per other value, varying one key at a time.

    Preflighting these catches a bad value of any single key before Hydra creates the
    sweep directory, at a cost linear (not exponential) in the values. ``hydra.*`` and
    ``hydra/...`` overrides and non-discrete sweeps (Optuna's ``interval(...)``) are left
    to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:  # noqa: BLE001
        raise translate(exc, overrides, _FOUND) from None
    fixed: list[str] = []
    swept: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            continue
        if not o.is_sweep_override():
            fixed.append(o.input_line)
        elif o.is_discrete_sweep():
            swept.append([f"{key}={v}" for v in o.sweep_string_iterator()])
    base = fixed + [values[0] for values in swept]
    jobs = [base]
    for i, values in enumerate(swept):
        for value in values[1:]:
            jobs.append(fixed + [v[0] if j != i else value for j, v in enumerate(swept)])
    return jobs
# --- malformed overrides and an uncreatable run_dir, as one paragraph ----------
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
    from kitchen.runs.lifecycle import check_run_dir_path

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


def current_workflow(overrides: list[str], found: dict[str, recipes_mod.Recipe]) -> str:
    """The workflow a composition picks (from overrides, else the recipe), for messages."""
    chosen = {o.split("=", 1)[0].lstrip("+~").removeprefix("override ").strip("/"): o.split("=", 1)[1]
              for o in overrides if "=" in o}
    if "workflow" in chosen:
        return chosen["workflow"]
    recipe = found.get(chosen.get("recipe", "sl_basic"))
    return recipe.workflow if recipe else "supervised"


def key_owners_message(key: str, workflow: str, found: dict[str, recipes_mod.Recipe], where: str) -> str | None:
    """'Key X belongs to workflow W (recipes ...)' when another workflow's schema has ``key``."""
    from kitchen.workflows import workflow_for_key

    owners = [(w, src) for w, src in workflow_for_key(key.split(".")[0]) if w != workflow]
    if not owners:
        return None
    names = ", ".join(f"'{w}'" + (f" (from {src})" if src != "kitchen" else "") for w, src in owners)
    recipes = sorted(r.name for r in found.values() if r.workflow in {w for w, _ in owners})
    uses = f" Recipes using it: {', '.join(recipes)}." if recipes else ""
    noun = "workflow" if len(owners) == 1 else "workflows"
    return (f"key '{key}' {where} belongs to the {names} {noun}, not to '{workflow}', which this run uses.{uses} "
            f"Run `kitchen describe RECIPE` to see the keys of a recipe's workflow")


def _entry_message(key: str, workflow: str, where: str) -> str | None:
    """For ``group.entry`` where the run's workflow has ``group`` as a fixed-key mapping but no
    such entry (``dataset_columns.question``): the entries it does have. Every workflow has
    ``dataset_columns``, so naming other workflows as the owners would send the user astray."""
    head, _, entry = key.partition(".")
    if not entry:
        return None
    from kitchen.workflows import get_workflow

    try:
        field = get_workflow(workflow).config.model_fields.get(head)
    except ConfigError:
        return None
    if field is None:
        return None
    default = field.get_default(call_default_factory=True)
    if not isinstance(default, dict) or not default:
        return None
    entries = sorted(map(str, default))
    return (f"Unknown key '{key}' {where}: {head} has no entry '{entry}'.{did_you_mean(entry, entries)} "
            f"Its entries are: {', '.join(entries)}.")


def unknown_key_message(key: str, workflow: str, found: dict[str, recipes_mod.Recipe], where: str) -> str:
    """One paragraph for a key the chosen workflow does not have: whose key it is, or a did-you-mean."""
    entry = _entry_message(key, workflow, where)
    if entry:
        return entry
    owner = key_owners_message(key, workflow, found, where)
    if owner:
        return owner[0].upper() + owner[1:] + "."
    return (f"Unknown key '{key}' {where}.{did_you_mean(key.split('.')[-1], every_key())} "
            f"Run `kitchen describe RECIPE` to see every hyperparameter of a recipe's workflow; a custom stage's keys "
            f"belong in its workflow's config schema.")


def _is_hydra_error(exc: BaseException) -> bool:
    mod = type(exc).__module__
    return mod.startswith(("hydra", "omegaconf"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_hint(overrides: list[str], found: dict[str, recipes_mod.Recipe]) -> str | None:
    """What the override Hydra could not parse was probably meant to be, in one sentence.

    The three a newcomer types: a bare recipe name (``kitchen run sl_basic``), an option
    spelled the argparse way (``--max_steps 5``), and a URL whose query (``?token=...&x=1``)
    the override grammar cannot read unquoted.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for i, line in enumerate(overrides):
        try:
            parser.parse_overrides([line])
            continue
        except Exception:  # noqa: BLE001 - any parse failure marks the culprit
            pass
        if line.startswith("-"):
            key = line.lstrip("-").split("=", 1)[0]
            value = line.split("=", 1)[1] if "=" in line else (overrides[i + 1] if i + 1 < len(overrides) else "VALUE")
            return f"Overrides are key=value, not options: write {key}={value}, not {line}{'' if '=' in line else ' ' + value}."
        if "=" not in line:
            if line in found:
                return f"Did you mean recipe={line}? A recipe is chosen with recipe=NAME."
            return f"'{line}' is not key=value; write {line}=VALUE (or recipe=NAME to choose a recipe)."
        key, value = line.split("=", 1)
        if "://" in value or any(c in value for c in "?&=;"):
            return (f"Quote the value of {key.lstrip('+~')}: characters such as ? & = in it break the override syntax, "
                    f"so write '{key}=\"{value}\"' (single quotes for the shell, double quotes for the override).")
        return None
    return None


def translate(exc: BaseException, overrides: list[str], found: dict[str, recipes_mod.Recipe]) -> ConfigError:
    """Turn a Hydra/OmegaConf exception into a one-paragraph ConfigError."""
    text = str(exc)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing:
        group, choice = missing.group(1), missing.group(2)
        options = sorted(found) if group == "recipe" else group_options(group)
        from_cli = any(o.split("=", 1)[0].lstrip("+~") == group and o.endswith(f"={choice}") for o in overrides)
        if group == "workflow" and choice in _BROKEN_WORKFLOWS:
            return ConfigError(_BROKEN_WORKFLOWS[choice])
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
        return ConfigError(unknown_key_message(not_in.group(1), current_workflow(overrides, found), found, "on the command line"))
    if type(exc).__name__ == "OverrideParseException" or "Error parsing override" in text:
        from kitchen.io.secrets import redact_text

        hint = parse_hint(overrides, found)
        return ConfigError(redact_text(f"Could not parse the command-line overrides: {_first_line(exc)} "
                                       f"{hint or 'Use key=value, group=choice, +key=value or ~key.'}"))
    for recipe in found.values():
        if str(recipe.path) in text or f"recipe/{recipe.name}" in text:
            return ConfigError(f"Recipe '{recipe.name}' ({recipe.path}) could not be composed: {_first_line(exc)}")
    return ConfigError(f"Hydra could not compose the config: {_first_line(exc)}")
