"""The catalog of named parts: built-ins plus whatever installed packages contribute.

Installing a package is the whole registration, as with pytest and Hydra plugins: a
package declares entry points in the groups below, and kitchen finds them by name with
no flag::

    [project.entry-points."crucible_kitchen.workflows"]
    rsft = "my_cookbook.workflow:RSFT"          # a kitchen.engine.ir.Workflow
    [project.entry-points."crucible_kitchen.recipes"]
    my_cookbook = "my_cookbook:RECIPES_DIR"     # a folder of recipe YAML files (str, Path or module)

Groups: ``crucible_kitchen.{recipes,workflows,stages,envs,tools,renderers,evaluators,sinks}``
(a tool is a typed function an env's policy may call, see :mod:`kitchen.train.tools`).
Built-ins are named here by dotted path and imported only when used, so listing names
never imports torch. A plugin whose entry point fails to load is one warning naming its
package and is left out; two sources that give the same name is a ConfigError naming
both. Every swappable part (adapters, sinks, envs, renderers, evaluators) is then built
by :func:`kitchen.config.instantiate.build` from a short name or a ``_target_`` node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kitchen.errors import ConfigError, KitchenError, did_you_mean
from kitchen.telemetry.sink_table import BUILTIN_SINKS

KINDS = ("recipes", "workflows", "stages", "envs", "tools", "renderers", "evaluators", "sinks")
GROUP_PREFIX = "crucible_kitchen."
BUILTIN = "kitchen"

# Short name -> "module:attribute" for everything kitchen ships.
BUILTINS: dict[str, dict[str, str]] = {
    "recipes": {},  # bundled recipes are found by folder (kitchen.config.recipes)
    "workflows": {
        "supervised": "kitchen.workflows.supervised:SUPERVISED",
        "preference": "kitchen.workflows.preference:PREFERENCE",
        "reinforcement": "kitchen.workflows.reinforcement:REINFORCEMENT",
        "distillation": "kitchen.workflows.distillation:DISTILLATION",
        "kto": "kitchen.workflows.kto:KTO",
    },
    "stages": {  # stages are values in workflows; names here only list them (`kitchen plugins`)
        "load_dataset": "kitchen.stages.data:LoadDataset",
        "open_session": "kitchen.stages.session:OpenSession",
        "evaluate": "kitchen.stages.evaluate:Evaluate",
        "checkpoint": "kitchen.stages.checkpoint:Checkpoint",
        "save_weights": "kitchen.stages.checkpoint:SaveWeights",
    },
    "envs": {"arithmetic": "kitchen.train.envs:ArithmeticEnv", "calculator": "kitchen.envs.calculator:CalculatorEnv"},
    "tools": {"calculator": "kitchen.envs.calculator:calculator"},
    "renderers": {
        "auto": "kitchen.train.renderers:auto_renderer",
        "chat_template": "kitchen.train.renderers:ChatTemplateRenderer",
        "role_colon": "kitchen.train.renderers:RoleColonRenderer",
    },
    "evaluators": {
        "greedy_preview": "kitchen.evaluators:GreedyPreview",
        "lm_eval": "kitchen.evaluators.lm_eval:LMEval",
    },
    # the shipped sinks' one table is kitchen.telemetry.sink_table (with their extras); "module.attr" -> "module:attr"
    "sinks": {name: ":".join(entry.target.rsplit(".", 1)) for name, entry in BUILTIN_SINKS.items()},
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    target: str  # "module:attribute"
    source: str  # "kitchen" or the distribution that provides it

    def load(self) -> Any:
        return load_target(self.target, f"{self.kind[:-1]} '{self.name}' from {self.source}")

    @property
    def dotted(self) -> str:
        """The same target as a Hydra ``_target_`` (module.attribute)."""
        return self.target.replace(":", ".")


class TargetImportError(Exception):
    """:func:`import_target` could not give the object: ``module`` failed to import
    (``attr`` is None), or imported and has no ``attr``. ``cause`` is the original error.

    Not a KitchenError, so it never reaches a user as is: each caller words it for what
    it was loading (:func:`load_target` here, ``build`` in :mod:`kitchen.config.instantiate`).
    """

    def __init__(self, module: str, attr: str | None, cause: Exception) -> None:
        super().__init__(f"{module}{'.' + attr if attr else ''}: {type(cause).__name__}: {cause}")
        self.module, self.attr, self.cause = module, attr, cause


def import_target(target: str) -> Any:
    """The object a dotted path names: ``module:attr.sub``, ``module.attr`` or a module ``pkg.mod``.

    The one loader of code by path. Why one: entry points (``module:attr``, or ``pkg.mod``
    for a module), ``_target_`` nodes (``module.attr``, Hydra's spelling) and the adapters'
    preflight/tokenizer hooks all name code this way, so they must resolve alike. A
    KitchenError raised while importing passes through (it is already one paragraph);
    any other failure is a :class:`TargetImportError` saying which step failed.
    """
    import importlib

    def imported(name: str) -> Any:
        try:
            return importlib.import_module(name)
        except KitchenError:
            raise
        except Exception as exc:
            raise TargetImportError(name, None, exc) from exc

    if ":" in target:
        module_name, _, attr = target.partition(":")
    else:  # "pkg.module" (a module) or "pkg.module.attr"
        try:
            return importlib.import_module(target)
        except KitchenError:
            raise
        except ModuleNotFoundError as exc:
            if exc.name != target:  # the module exists and one of its own imports is missing
                raise TargetImportError(target.rpartition(".")[0] or target, None, exc) from exc
        except Exception as exc:
            raise TargetImportError(target.rpartition(".")[0] or target, None, exc) from exc
        module_name, _, attr = target.rpartition(".")
    obj = imported(module_name)
    for part in attr.split(".") if attr else ():
        try:
            obj = getattr(obj, part)
        except KitchenError:
            raise
        except AttributeError as exc:
            raise TargetImportError(module_name, part, exc) from exc
        except Exception as exc:
            raise TargetImportError(module_name, None, exc) from exc
    return obj


def load_target(target: str, what: str) -> Any:
    """Import ``module:attr`` (or ``module.attr``); a failure is one ConfigError naming ``what``."""
    try:
        return import_target(target)
    except ConfigError:
        raise
    except TargetImportError as err:
        exc: Exception = err.cause
    except KitchenError as kitchen_exc:  # raised while importing, but not a config problem
        exc = kitchen_exc
    raise ConfigError(f"Could not load {what} ({target}): {type(exc).__name__}: {exc}".rstrip(": ")) from None


class Catalog:
    """Names per kind, each with where it came from."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self._by_kind: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._clashes: dict[tuple[str, str], list[Entry]] = {}
        for entry in entries:
            known = self._by_kind[entry.kind].get(entry.name)
            if known is not None and known.source != entry.source:
                self._clashes.setdefault((entry.kind, entry.name), [known]).append(entry)
                continue
            self._by_kind[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._by_kind[kind][n] for n in self.names(kind)]

    def entry(self, kind: str, name: str) -> Entry:
        clash = self._clashes.get((kind, name))
        if clash:
            who = " and ".join(f"{e.source} ({e.target})" for e in clash)
            way_out = ("uninstall one of them." if kind in ("workflows", "recipes") else
                       "uninstall one of them, or refer to the one you mean by its _target_ instead of the short name.")
            raise ConfigError(f"Two packages register the {kind[:-1]} name '{name}': {who}. To use it, {way_out}")
        try:
            return self._by_kind[kind][name]
        except KeyError:
            known = self.names(kind)
            raise ConfigError(
                f"Unknown {kind[:-1]} '{name}'.{did_you_mean(name, known)} Available {kind}: {', '.join(known) or 'none'}."
                + (" Or name your own class with a {_target_: module.Class} node." if kind != "workflows" else
                   " A plugin package adds workflows through the 'crucible_kitchen.workflows' entry-point group.")
            ) from None

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).load()

    def source(self, kind: str, name: str) -> str:
        entry = self._by_kind[kind].get(name)
        return entry.source if entry else "?"


def _entry_points() -> Iterable[tuple[str, Any]]:
    from importlib.metadata import entry_points

    eps = entry_points()
    for kind in KINDS:
        for ep in eps.select(group=GROUP_PREFIX + kind):
            yield kind, ep


def discover() -> Catalog:
    """Built-ins plus every installed plugin's entry points (names only: nothing is imported)."""
    entries = [Entry(kind, name, target, BUILTIN) for kind, names in BUILTINS.items() for name, target in names.items()]
    for kind, ep in _entry_points():
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0].split(".")[0]
        entries.append(Entry(kind, ep.name, ep.value, dist))
    return Catalog(entries)


_CATALOG: Catalog | None = None


def catalog(refresh: bool = False) -> Catalog:
    global _CATALOG
    if _CATALOG is None or refresh:
        _CATALOG = discover()
    return _CATALOG


def check_workflows() -> dict[str, tuple[str, str]]:
    """Load every plugin workflow once; {name: (package, why)} for those that fail (the caller warns or errors)."""
    broken = {}
    for entry in catalog().entries("workflows"):
        if entry.source == BUILTIN:
            continue
        try:
            entry.load()
        except ConfigError as exc:
            broken[entry.name] = (entry.source, f"plugin {entry.source} is skipped: {exc.render()}")
    return broken


def plugin_recipe_dirs() -> list[tuple[str, Any]]:
    """(package, folder) for every plugin's ``crucible_kitchen.recipes`` entry point.

    A broken entry point is one warning naming the package, never an error: ``kitchen
    --help`` and ``kitchen recipes`` must keep working with a bad plugin installed.
    """
    from pathlib import Path

    found = []
    for entry in catalog().entries("recipes"):
        try:
            obj = load_target(entry.target, f"the recipe folder '{entry.name}'")
            if callable(obj) and not isinstance(obj, type):
                obj = obj()
            if getattr(obj, "__file__", None):
                obj = Path(obj.__file__).parent / "recipes"
            folder = Path(obj)
        except Exception as exc:  # noqa: BLE001
            warn_once(f"plugin {entry.source} is skipped: {exc}", key=entry.source)
            continue
        if not folder.is_dir():
            warn_once(f"plugin {entry.source}: recipes entry point '{entry.name}' names {folder}, which is not a folder; skipped.",
                      key=entry.source)
            continue
        found.append((entry.source, folder))
    return found


_WARNED: set[str] = set()
warning_sink: Callable[[str], None] | None = None


def warn_once(message: str, key: str | None = None) -> None:
    """One warning per ``key`` (a plugin package: its first problem) per process, on stderr
    (the CLI) or through ``warning_sink``."""
    key = key or message
    if key in _WARNED:
        return
    _WARNED.add(key)
    if warning_sink is not None:
        warning_sink(message)
        return
    import sys

    print(f"warning: {message}", file=sys.stderr)
