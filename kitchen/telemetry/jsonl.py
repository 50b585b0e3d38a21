"""JSON Lines telemetry: ``events.jsonl`` (every event) and ``metrics.jsonl`` (numbers).

``JsonlSink(run_dir)`` appends one JSON object per line:

* ``events.jsonl``: ``{"event": name, "time": unix_seconds, **payload}`` for every event,
  with secret-looking values replaced by ``"***"`` (see :func:`redact`).
* ``metrics.jsonl``: one row per ``training.step`` (``step``, ``loss`` - ``null`` when the
  engine sent none - and every other numeric field of the payload) and one row per
  ``eval.result`` with the eval metrics flattened:
  ``{"step": 10, "split": "test", "test_nll": 1.2}``.

Both files are opened in append mode, so a resumed run continues them; if a killed run
left a half-written last line, a newline is added first so the next record starts clean
(readers skip the broken line, see :func:`kitchen.telemetry.metrics_store.read_metrics`).

Serialisation rules (:func:`dumps`): numpy scalars/arrays become Python numbers/lists,
``Path``/``datetime``/enums/anything else become strings, tuples and sets become lists,
and **NaN / +inf / -inf become ``null``** so every line stays strict JSON that any parser
(jq, pandas, JavaScript) accepts. A NaN loss is therefore a ``null`` loss in the files;
the engine reports divergence separately (``run.warning`` / ``workflow.exception``).

Cost: one ``json.dumps`` + ``write`` per event. ``metrics.jsonl`` is flushed on every row;
``events.jsonl`` is flushed on every event except the high-frequency ``stage.start`` /
``stage.stop`` ones, which ride along with the next flush (at the latest the following
``training.step``). Nothing is fsynced.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from kitchen.io.secrets import redact_url
from kitchen.telemetry.events import (
    EVAL_RESULT,
    STAGE_START,
    STAGE_STOP,
    TRAINING_STEP,
    Event,
)

EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.jsonl"
REDACTED = "***"

# ---------------------------------------------------------------------------- redaction

# A key is secret when one of its words (split on non-alphanumerics and camelCase) is one of
# these, or when it contains one of the compound forms. Word matching keeps ``tokens``,
# ``tokens_per_s``, ``max_tokens`` and ``tokenizer`` visible while ``token``, ``hf_token``,
# ``accessToken`` are hidden.
_SECRET_WORDS = frozenset({
    "token", "secret", "secrets", "password", "passwd", "authorization", "apikey",
    "credential", "credentials", "cookie",
})
_SECRET_COMPOUNDS = ("api_key", "apikey", "access_key", "private_key", "secret", "password")
_WORD_SPLIT = re.compile(r"[^0-9a-zA-Z]+|(?<=[a-z0-9])(?=[A-Z])")
_secret_key_cache: dict[str, bool] = {}


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret (case-insensitive; cached per key)."""
    if not isinstance(key, str):
        return False
    hit = _secret_key_cache.get(key)
    if hit is None:
        low = key.lower()
        compact = low.replace("-", "_")
        words = {w.lower() for w in _WORD_SPLIT.split(key) if w}
        hit = bool(words & _SECRET_WORDS) or any(c in compact for c in _SECRET_COMPOUNDS)
        if len(_secret_key_cache) < 4096:
            _secret_key_cache[key] = hit
    return hit


def _hide(value: Any) -> bool:
    # None stays visible ("no token configured" is useful); numbers are counts, not secrets
    # (``token_count: 12``); everything else under a secret key is hidden, containers included.
    return value is not None and not isinstance(value, (bool, int, float))


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with the values of secret-looking keys replaced by ``"***"``.

    Walks nested mappings and lists/tuples (tuples come back as lists). Secret keys are
    matched case-insensitively on words: ``api_key``, ``apiKey``, ``token``, ``hf_token``,
    ``secret``, ``client_secret``, ``password``, ``authorization``, ``access_key``,
    ``private_key``, ``credentials``... but not ``tokens`` / ``tokens_per_s`` /
    ``tokenizer``. A ``None`` or numeric value under a secret key is kept (it reveals
    nothing). Containers are always copied; the input is never modified.
    """
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(k) and _hide(v) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_url(obj)  # credentials inside URLs (user:pass@host, ?token=...)
    return obj


# Payload keys of the engine's conventions whose values are scalars: a payload made only of
# these needs no redaction walk (one C-level subset test for stage.* and plain steps).
# Only keys that never hold a mapping (``model`` or ``error`` might, so they take the walk).
_SCALAR_KEYS = frozenset({
    "stage", "path", "step", "duration_s", "total_steps", "epoch", "loss", "lr", "tokens",
    "tokens_per_s", "elapsed_s", "grad_norm", "split",
})


_ATOMS = frozenset({str, int, float, bool, type(None)})
_NUMERIC = frozenset({int, float, bool, type(None)})


def _redact_fast(obj: Any) -> Any:
    """Like :func:`redact` but returns ``obj`` itself when nothing needs hiding (hot path)."""
    if isinstance(obj, dict):
        if obj.keys() <= _SCALAR_KEYS:
            return obj
        out = None
        for k, v in obj.items():
            if type(v) in _NUMERIC:  # numbers are never hidden, even under a secret-looking key
                continue
            if is_secret_key(k) and _hide(v):
                new = REDACTED
            elif type(v) is str:
                if "://" not in v:
                    continue
                new = redact_url(v)  # credentials inside URLs
            elif type(v) in _ATOMS:
                continue
            elif isinstance(v, (dict, list, tuple, Mapping)):
                new = _redact_fast(v)
            else:
                continue
            if new is not v:
                if out is None:
                    out = dict(obj)
                out[k] = new
        return obj if out is None else out
    if type(obj) is str:
        return redact_url(obj) if "://" in obj else obj
    if isinstance(obj, (list, tuple)):
        items = [_redact_fast(v) for v in obj]
        if any(a is not b for a, b in zip(items, obj)):
            return items
        return obj
    if isinstance(obj, Mapping):  # OmegaConf and friends: take the general path
        return redact(obj)
    return obj


# ------------------------------------------------------------------------ serialisation


def _default(o: Any) -> Any:
    """json.dumps fallback for values the stdlib encoder refuses."""
    item = getattr(o, "item", None)
    if callable(item) and getattr(o, "ndim", 0) == 0:  # numpy / torch scalars
        try:
            return item()
        except Exception:  # noqa: BLE001
            pass
    tolist = getattr(o, "tolist", None)
    if callable(tolist):  # numpy arrays, torch tensors
        try:
            return tolist()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=repr)
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, (_dt.datetime, _dt.date, _dt.time)):
        return o.isoformat()
    if isinstance(o, enum.Enum):
        return o.value if isinstance(o.value, (str, int, float)) else o.name
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return str(o)


def _sanitize(o: Any) -> Any:
    """Replace non-finite floats by None, converting odd values on the way (slow path)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    if isinstance(o, Mapping):
        return {str(k) if not isinstance(k, (str, int, float, bool)) else k: _sanitize(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_sanitize(v) for v in o]
    converted = _default(o)
    if isinstance(converted, str):
        return converted
    if converted is o:
        return str(o)
    return _sanitize(converted)


_ENCODE_SAFE = json.JSONEncoder(allow_nan=False, default=str).encode

try:  # the C encoder, built once (json.dumps builds one per call): ~35% faster per event
    from json.encoder import c_make_encoder as _c_make_encoder, encode_basestring_ascii as _c_ascii

    if _c_make_encoder is None or _c_ascii is None:
        raise ImportError
    # markers=None: no circular-reference bookkeeping (a cycle ends in RecursionError, caught below)
    _C_ITER = _c_make_encoder(None, _default, _c_ascii, None, ": ", ", ", False, False, False)

    def _encode(obj: Any) -> str:
        return "".join(_C_ITER(obj, 0))

except ImportError:  # pragma: no cover - pure-Python json
    _encode = json.JSONEncoder(allow_nan=False, default=_default).encode


def dumps(obj: Any) -> str:
    """Strict one-line JSON: NaN/inf -> null, numpy/Path/... converted (see module doc)."""
    try:
        return _encode(obj)
    except (ValueError, TypeError, RecursionError):
        # NaN/inf somewhere (ValueError), keys of odd types (TypeError), a cycle: slow path.
        try:
            return _ENCODE_SAFE(_sanitize(obj))
        except (ValueError, TypeError, RecursionError):
            return _ENCODE_SAFE({"unserialisable": repr(obj)[:1000]})


# ------------------------------------------------------------------------------- files


def open_append(path: str | os.PathLike[str]):
    """Open a JSONL file for appending, ending a half-written last line first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a", encoding="utf-8")
    try:
        size = path.stat().st_size
        if size:
            with open(path, "rb") as probe:
                probe.seek(size - 1)
                if probe.read(1) != b"\n":
                    fh.write("\n")
                    fh.flush()
    except OSError:
        pass
    return fh


_NUMBER = (int, float)
_NO_FLUSH = frozenset({STAGE_START, STAGE_STOP})


def metrics_row_for_step(data: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics.jsonl row for a training.step payload: step, loss and numeric fields."""
    row: dict[str, Any] = {"step": data.get("step"), "loss": data.get("loss")}
    for k, v in data.items():
        if k not in row and (isinstance(v, _NUMBER) or (hasattr(v, "item") and getattr(v, "ndim", 1) == 0)):
            row[k] = v
    return row


def metrics_row_for_eval(data: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics.jsonl row for an eval.result payload: step, split, flattened metrics."""
    row: dict[str, Any] = {"step": data.get("step")}
    if data.get("split") is not None:
        row["split"] = data.get("split")
    metrics = data.get("metrics")
    if isinstance(metrics, Mapping):
        for k, v in metrics.items():
            row.setdefault(str(k), v)
    return row


def _with_path(exc: OSError, path: Path, line: str) -> OSError:
    """A buffered write's OSError names no file; say which one, and how much it was writing
    (a full disk is reported with the path and the bytes needed)."""
    out = OSError(exc.errno, exc.strerror or str(exc), str(path))
    out.needed = len(line.encode("utf-8"))  # type: ignore[attr-defined]
    return out


class JsonlSink:
    """Appends every event to ``run_dir/events.jsonl``; metrics go through a MetricsStore
    (by default the JSONL one over ``run_dir/metrics.jsonl``)."""

    def __init__(self, run_dir: str | os.PathLike[str], *, skip: Iterable[str] = (), metrics: Any = None) -> None:
        """``skip``: event names not to write to events.jsonl (e.g. ``("stage.start",)`` to
        halve the stage-event cost; ``stage.stop`` carries the same path plus duration).
        ``metrics``: the MetricsStore that per-step and evaluation rows are recorded in."""
        from kitchen.telemetry.metrics_store import JsonlMetricsStore

        self.run_dir = Path(run_dir)
        self._skip = frozenset(skip)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.run_dir / EVENTS_FILE
        self.metrics_path = self.run_dir / METRICS_FILE
        self._events = open_append(self.events_path)
        self._metrics = metrics if metrics is not None else JsonlMetricsStore(self.metrics_path, eager=True)
        self._closed = False

    def handle(self, event: Event) -> None:
        if self._closed:
            return
        name = event.name
        data = event.data
        if name in self._skip:
            if name == TRAINING_STEP:
                self._write_metrics(metrics_row_for_step(data))
            elif name == EVAL_RESULT:
                self._write_metrics(_redact_fast(metrics_row_for_eval(data)))
            return
        if data:
            record = {"event": name, "time": event.time, **_redact_fast(data)}
            if "event" in data or "time" in data:  # a payload may not shadow the envelope
                record["event"], record["time"] = name, event.time
        else:
            record = {"event": name, "time": event.time}
        events = self._events
        line = dumps(record) + "\n"
        try:
            events.write(line)
            if name in _NO_FLUSH:
                return
            events.flush()
        except OSError as exc:
            raise _with_path(exc, self.events_path, line) from None
        if name == TRAINING_STEP:
            self._write_metrics(metrics_row_for_step(data))
        elif name == EVAL_RESULT:
            self._write_metrics(_redact_fast(metrics_row_for_eval(data)))

    def _write_metrics(self, row: dict[str, Any]) -> None:
        step = row.pop("step", None)
        self._metrics.record(step, row)

    def flush(self) -> None:
        if not self._closed:
            self._events.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._events.flush()
            self._events.close()
        finally:
            self._metrics.close()


__all__ = [
    "EVENTS_FILE", "METRICS_FILE", "REDACTED", "JsonlSink", "dumps", "is_secret_key",
    "metrics_row_for_eval", "metrics_row_for_step", "open_append", "redact",
]
