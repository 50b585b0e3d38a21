"""One way to build every swappable part: a short name or a ``_target_`` node.

Adapters, sinks, envs, renderers and evaluators all come through :func:`build`, as
lightning-hydra-template's instantiators build loggers and callbacks. A short name
(``jsonl``, ``arithmetic``, ``role_colon``) is looked up in the plugin catalog, which
holds the built-ins and whatever installed packages register; a mapping with
``_target_`` names any importable class or function, with its options beside it::

    telemetry:
      sinks: [console, jsonl, {_target_: my_pkg.sinks.SlackSink, channel: "#runs"}]
    env: {_target_: my_pkg.envs.WordleEnv, max_guesses: 6}

Runtime arguments the engine supplies (a tokenizer, the run dir) are passed as keyword
arguments next to the node's own, but only those the class's constructor names (as
pytest hands fixtures by parameter name), so a sink that needs no run dir simply does
not ask for one. Any failure is one ConfigError naming the part.
"""

from __future__ import annotations

from typing import Any, Mapping

from kitchen.errors import ConfigError, KitchenError

# A config may name any class or factory, but never these modules' functions: a recipe
# someone shared must not be able to run a shell command or rewrite files by naming
# `os.system` or `shutil.rmtree` as an adapter.
REFUSED_MODULES = frozenset({"os", "posix", "nt", "subprocess", "shutil", "sys", "builtins", "importlib", "pty",
                             "socket", "pickle", "marshal", "ctypes", "runpy", "code", "pathlib", "io", "tempfile"})


def check_allowed(target: str, label: str) -> None:
    """Refuse a ``_target_`` in a module that no config has a reason to call into."""
    top = target.replace(":", ".").split(".")[0]
    if top in REFUSED_MODULES:
        raise ConfigError(
            f"{label} names '{target}', a function of the standard module '{top}'. Kitchen does not call into "
            f"{', '.join(sorted(REFUSED_MODULES - {'nt', 'posix'}))} from a config; name a class or factory of your own."
        )


def target_of(kind: str, entry: str | Mapping[str, Any]) -> tuple[str, dict[str, Any], str]:
    """``(dotted target, options, label)`` for a short name or a ``_target_`` node."""
    if isinstance(entry, str):
        from kitchen.config.catalog import catalog

        found = catalog().entry(kind, entry)
        return found.dotted, {}, f"{kind[:-1]} '{entry}'"
    if isinstance(entry, Mapping) and len(entry) == 1 and "_target_" not in entry:
        # {name: {options}}: a short name with its options (`{lm_eval: {tasks: [...]}}`)
        ((name, given),) = entry.items()
        if isinstance(name, str) and (given is None or isinstance(given, Mapping)):
            from kitchen.config.catalog import catalog

            found = catalog().entry(kind, name)
            return found.dotted, {str(k): v for k, v in (given or {}).items()}, f"{kind[:-1]} '{name}'"
    if isinstance(entry, Mapping):
        options = {str(k): v for k, v in entry.items()}
        target = options.pop("_target_", None)
        if not isinstance(target, str) or not target:
            raise ConfigError(f"A {kind[:-1]} given as a mapping needs a _target_ naming a class or function, got {dict(entry)!r}.")
        check_allowed(target, f"The {kind[:-1]} _target_")
        return target, options, f"{kind[:-1]} {target}"
    raise ConfigError(f"A {kind[:-1]} is a name or a mapping with _target_, not {entry!r}.")


def resolve(kind: str, entry: str | Mapping[str, Any]) -> Any:
    """The class or function ``entry`` names, imported but not called (for preflight checks)."""
    from kitchen.config.catalog import load_target

    target, _, label = target_of(kind, entry)
    return load_target(target, label)


def build(kind: str, entry: str | Mapping[str, Any], /, **runtime: Any) -> Any:
    """Instantiate ``entry`` (a short name or ``_target_`` node) with its options plus ``runtime``."""
    target, options, label = target_of(kind, entry)
    factory = _import(target, label)
    try:
        return factory(**{**options, **_accepted(factory, runtime)})
    except KitchenError:
        raise
    except TypeError as exc:
        raise ConfigError(f"Could not build {label}: {exc}. Check the options given next to it.") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"Could not build {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _accepted(factory: Any, runtime: dict[str, Any]) -> dict[str, Any]:
    """The runtime arguments ``factory`` names as parameters (``**kwargs`` receives none of
    them: those are the node's own options)."""
    import inspect

    if not runtime:
        return runtime
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return runtime
    return {k: v for k, v in runtime.items()
            if k in params and params[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def _import(target: str, label: str) -> Any:
    """:func:`kitchen.config.catalog.import_target`, its failure worded for a part being built."""
    from kitchen.config.catalog import TargetImportError, import_target

    try:
        return import_target(target)
    except TargetImportError as err:
        cause = err.cause
        if err.attr is not None:
            message = f"Could not build {label}: module '{err.module}' has no '{err.attr}'."
        elif isinstance(cause, ModuleNotFoundError):  # a tracker's missing SDK is named with its extra earlier (resolve_sinks)
            message = f"Could not import {label}: no module named '{cause.name}'."
        else:
            message = f"Could not import {label} ({err.module}): {type(cause).__name__}: {cause}"
    raise ConfigError(message) from None
