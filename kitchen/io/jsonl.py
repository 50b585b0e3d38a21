"""JSON Lines files: strict one-line JSON, and appending that survives a killed writer.

Every JSONL file kitchen writes (``events.jsonl``, ``metrics.jsonl``, the checkpoint
index) goes through these two pieces:

* :func:`dumps`: numpy scalars/arrays become Python numbers/lists, ``Path``/``datetime``/
  enums/anything else become strings, tuples and sets become lists, and **NaN / +inf /
  -inf become ``null``**, so every line stays strict JSON that any parser (jq, pandas,
  JavaScript) accepts.
* :func:`open_append`: append mode, so a resumed run continues the file; if a killed run
  left a half-written last line, a newline is added first so the next record starts clean
  (readers skip the broken line, see :func:`kitchen.telemetry.metrics_store.read_metrics`).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

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
    from json.encoder import c_make_encoder as _c_make_encoder
    from json.encoder import encode_basestring_ascii as _c_ascii

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


def oserror_with_path(exc: OSError, path: Path, line: str) -> OSError:
    """A buffered write's OSError names no file; say which one, and how much it was writing
    (a full disk is reported with the path and the bytes needed)."""
    out = OSError(exc.errno, exc.strerror or str(exc), str(path))
    out.needed = len(line.encode("utf-8"))  # type: ignore[attr-defined]
    return out


__all__ = ["dumps", "open_append", "oserror_with_path"]
