"""Sinks are components: one instantiate path from ``telemetry.sinks`` to objects on the bus.

Each entry of ``telemetry.sinks`` is either

* a short name (``console``, ``jsonl``, ``wandb``, ``tensorboard``, ``mlflow``,
  ``prometheus``) that maps to a shipped ``_target_`` node in :data:`BUILTIN_SINKS`
  (:mod:`kitchen.telemetry.sink_table`, re-exported here);
* a one-key mapping ``{NAME: {option: value}}`` that passes options to a shipped sink
  (``{wandb: {project: my-project}}``);
* a mapping with ``_target_`` naming any class or factory (a user's own sink), plus its
  options.

Every sink is built by :func:`hydra.utils.instantiate` with ``run=`` a :class:`SinkContext`
(the run dir, the redacted config, recipe/workflow/backend/model, whether this is a
resume and what run.json said before). A sink that wants a tracker run to survive a
resume calls ``run.remember(key, value)``; the run lifecycle stores those values in
run.json under ``"trackers"`` and hands them back through ``run.recall(key)`` next time.

:func:`resolve_sinks` checks names and optional dependencies without building anything,
so the run lifecycle calls it before it writes the run dir: a missing tracker SDK is a
ConfigError naming the extra to install, never a half-created run.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kitchen.errors import ConfigError, KitchenError, did_you_mean
from kitchen.telemetry.events import Event
from kitchen.telemetry.sink_table import BUILTIN_SINKS, SinkEntry

log = logging.getLogger("kitchen.telemetry")

# Set by a sweep job (kitchen.runs.sweeps) to its job number: the console sink then prefixes
# its lines with it, since parallel jobs share a terminal. Defined here, below the sweep
# runner, because the sink is what reads it.
SWEEP_JOB_ENV = "KITCHEN_SWEEP_JOB"


@dataclass
class SinkContext:
    """What every sink's constructor gets as ``run=``."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)  # the redacted spec, as in config.yaml
    recipe: str = ""
    workflow: str = ""
    backend: str = ""
    model: str = ""
    resume: bool = False
    previous_info: dict[str, Any] | None = None  # run.json as read at start (resume)
    git_sha: str | None = None
    trackers: dict[str, Any] = field(default_factory=dict)  # persisted to run.json["trackers"]

    def __post_init__(self) -> None:
        if not self.trackers and self.previous_info:
            old = self.previous_info.get("trackers")
            if isinstance(old, Mapping):
                self.trackers = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in old.items()}

    def remember(self, key: str, value: Any) -> None:
        """Store ``value`` in run.json["trackers"][key] (the lifecycle writes it)."""
        self.trackers[key] = value

    def recall(self, key: str) -> Any:
        """What ``remember(key, ...)`` stored in an earlier run in this run dir (resume), else None."""
        return self.trackers.get(key) if self.resume else None

    def tags(self) -> dict[str, str]:
        tags = {"recipe": self.recipe, "workflow": self.workflow, "backend": self.backend, "model": self.model}
        if self.git_sha:
            tags["git_sha"] = self.git_sha
        return {k: v for k, v in tags.items() if v}


# --------------------------------------------------------------------------- resolving


@dataclass
class _Resolved:
    label: str
    node: dict[str, Any]
    entry: SinkEntry | None


def _names() -> str:
    return ", ".join(BUILTIN_SINKS)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


def _missing_modules(entry: SinkEntry) -> list[str]:
    return [m for m in entry.requires if not _installed(m)]


def resolve_sinks(entries: Iterable[Any]) -> list[_Resolved]:
    """Check every entry (name, options, installed SDK); build nothing. Raises ConfigError."""
    out: list[_Resolved] = []
    for i, raw in enumerate(entries or []):
        where = f"telemetry.sinks[{i}]"
        if isinstance(raw, str):
            name, options = raw, {}
        elif isinstance(raw, Mapping) and "_target_" in raw:
            target = raw["_target_"]
            if not isinstance(target, str) or not target:
                raise ConfigError(f"{where}: _target_ must name a sink class or factory, e.g. mypackage.MySink.")
            out.append(_Resolved(target.rsplit(".", 1)[-1], dict(raw), None))
            continue
        elif isinstance(raw, Mapping) and len(raw) == 1:
            (name, options), = raw.items()
            if options is None:
                options = {}
            if not isinstance(options, Mapping):
                raise ConfigError(f"{where}: the options of sink '{name}' must be a mapping, got {options!r}.")
        else:
            raise ConfigError(
                f"{where} = {raw!r}: each sink is a name ({_names()}), a one-key mapping "
                "{name: {options}}, or a mapping with _target_ naming your own sink class."
            )
        entry = BUILTIN_SINKS.get(str(name))
        if entry is None:  # a plugin's sink (entry point group crucible_kitchen.sinks), or a typo
            from kitchen.config.catalog import catalog

            found = catalog()
            if str(name) not in found.names("sinks"):
                known = found.names("sinks")
                raise ConfigError(f"{where}: unknown sink '{name}'.{did_you_mean(str(name), known)} "
                                  f"The sinks are: {', '.join(known)}; or give a mapping with _target_ for your own sink class.")
            plugin = found.entry("sinks", str(name))
            out.append(_Resolved(str(name), {"_target_": plugin.dotted, **dict(options)}, None))
            continue
        missing = _missing_modules(entry)
        if missing:
            raise ConfigError(
                f"{where}: the {name} sink needs the Python package(s) {', '.join(missing)}, which are not installed. "
                f"Install them with: pip install 'crucible-kitchen[{entry.extra}]' (or [trackers] for every tracker)."
            )
        out.append(_Resolved(str(name), {"_target_": entry.target, **dict(options)}, entry))
    return out


def build_sinks(entries: Iterable[Any], run: SinkContext) -> list[Any]:
    """Build every sink through kitchen's one instantiate path, handing it ``run=`` (a
    SinkContext) and/or ``run_dir=`` if its constructor names them; a sink that cannot be
    built is a ConfigError."""
    sinks: list[Any] = []
    try:
        for item in resolve_sinks(entries):
            sinks.append(_build_one(item, run))
    except BaseException:
        for sink in sinks:  # close what was already open (threads, ports, tracker runs)
            try:
                sink.close()
            except Exception:  # noqa: BLE001
                pass
        raise
    return sinks


def _build_one(item: _Resolved, run: SinkContext) -> Any:
    from kitchen.config.instantiate import build

    try:
        sink = build("sinks", item.node, run=run, run_dir=run.run_dir)
    except KitchenError:
        raise
    except Exception as exc:  # noqa: BLE001
        cause = exc.__cause__ or exc
        if isinstance(cause, KitchenError):
            raise cause from None
        text = str(cause).strip().splitlines()
        raise ConfigError(
            f"telemetry sink '{item.label}' ({item.node.get('_target_')}) could not be built: "
            f"{type(cause).__name__}: {text[0] if text else ''}"
        ) from None
    if not callable(getattr(sink, "handle", None)):
        raise ConfigError(f"telemetry sink '{item.label}' ({item.node.get('_target_')}) has no handle(event) method.")
    if not callable(getattr(sink, "close", None)):
        sink.close = lambda: None  # type: ignore[attr-defined] # a user sink may not need closing
    return sink


# ------------------------------------------------------------------- shipped factories


def console_sink(run: SinkContext, **options: Any) -> Any:
    """The console; inside a sweep job, plain lines prefixed with the job number (parallel jobs share a terminal)."""
    import os

    from kitchen.telemetry.console import ConsoleSink

    job = os.environ.get(SWEEP_JOB_ENV)
    if job is not None:
        options.setdefault("prefix", f"[job {job}] ")
        options.setdefault("live", False)
    return ConsoleSink(**options)


def jsonl_sink(run: SinkContext, **options: Any) -> Any:
    from kitchen.telemetry.jsonl import JsonlSink

    return JsonlSink(run.run_dir, **options)


# ---------------------------------------------------------------- background delivery


class SinkFailed(RuntimeError):
    """A tracker's background writer failed; raised from ``handle``/``close`` so the bus drops it."""


_STOP = object()


class BackgroundSink:
    """Base for trackers: ``handle`` only queues, a daemon thread does the SDK calls.

    Why: a tracker SDK call can take milliseconds (a file write, an HTTP request, a
    database commit) and must never hold up the training step. ``handle`` filters by
    event name and puts the event on a queue (well under a microsecond); the worker
    drains the queue in batches into :meth:`write`. If the worker fails, it stops, and the
    next ``handle`` (or ``close``) raises :class:`SinkFailed`, so the event bus drops the
    sink with its one warning and the run goes on. ``close`` flushes what is queued, then
    calls :meth:`finish` on the worker thread.
    """

    wants: frozenset[str] = frozenset()
    close_timeout_s: float = 120.0

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"kitchen-{type(self).__name__}", daemon=True)
        self._thread.start()

    # -- called by the bus (training thread) ------------------------------------------------

    def handle(self, event: Event) -> None:
        if self._error is not None:
            self._raise()
        if event.name in self.wants:
            self._queue.put(event)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(self.close_timeout_s)
        if self._thread.is_alive():
            raise SinkFailed(f"still writing after {self.close_timeout_s:.0f}s; gave up waiting")
        if self._error is not None:
            self._raise()

    def _raise(self) -> None:
        err = self._error
        raise SinkFailed(f"{type(err).__name__}: {err}") from err

    # -- the worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self.start()
            stop = False
            while not stop:
                batch = [self._queue.get()]
                while True:  # take whatever else is queued: trackers like batches
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if batch[-1] is _STOP or _STOP in batch:
                    stop = True
                    batch = [e for e in batch if e is not _STOP]
                if batch:
                    self.write(batch)
            self.finish()
        except BaseException as exc:  # noqa: BLE001 - reported through handle/close
            self._error = exc
            try:
                self.abort()
            except Exception:  # noqa: BLE001
                pass

    def start(self) -> None:
        """Open the tracker run (worker thread)."""

    def write(self, events: list[Event]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self) -> None:
        """Flush and close the tracker run (worker thread)."""

    def abort(self) -> None:
        """Best-effort cleanup after a failure (worker thread)."""


def flat_params(config: Mapping[str, Any], prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"adapters": {"name": "noop"}}`` -> ``{"adapters.name": "noop"}``; lists become strings."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k in skip:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(str(x) for x in v)
        else:
            out[key] = v
    return out


def numeric_items(data: Mapping[str, Any], skip: Iterable[str] = ()) -> Iterable[tuple[str, float]]:
    """The finite-or-not float fields of an event payload (bools and strings skipped)."""
    skip = set(skip)
    for k, v in data.items():
        if k in skip or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            yield k, float(v)
        else:
            item: Callable[[], Any] | None = getattr(v, "item", None)
            if callable(item):
                try:
                    x = item()
                except Exception:  # noqa: BLE001
                    continue
                if isinstance(x, (int, float)) and not isinstance(x, bool):
                    yield k, float(x)


__all__ = [
    "BUILTIN_SINKS", "SWEEP_JOB_ENV", "BackgroundSink", "SinkContext", "SinkEntry", "SinkFailed",
    "build_sinks", "flat_params", "numeric_items", "resolve_sinks",
]
