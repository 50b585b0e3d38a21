"""Tokenized-data cache: a second run on the same data does not re-tokenize.

The cache key is the sha256 of everything that can change the tokens or weights:

* the dataset's content (sha256 of the file bytes; of every file for a directory; or a
  caller-supplied ``source_fingerprint`` for data that is not a local path),
* the tokenizer's identity (``name_or_path``, vocabulary size, class, special-token ids,
  sha256 of the chat template, and the ids of a fixed probe string),
* the renderer (name, ``train_on_what``, ``max_length``) and the kind of data (sft /
  preference),
* caller extras (split, row limits...), and :data:`CODE_VERSION`, bumped whenever
  rendering or the stored format changes.

Entries live in ``<root>/tokenized/<key>.json.gz`` where root is ``$KITCHEN_CACHE_DIR``,
else ``$XDG_CACHE_HOME/crucible-kitchen``, else ``~/.cache/crucible-kitchen``. Each entry
is gzip-compressed JSON: per example the full token list and the weights as run-length
``[start, end, value]`` triples. Writes are atomic (temp file + ``os.replace``); an
unreadable entry is treated as a miss and rewritten.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kitchen.ports.types import Datum
from kitchen.train.datum import DataStats, build_preference_data, build_sft_data, datum_from_rendered
from kitchen.train.renderers import Renderer

CODE_VERSION = 1
log = logging.getLogger("kitchen.data")

_PROBE = "Chef's probe: 250 ml = 1 cup.\n\n<|im_end|><|eot_id|></s> User: héllo 👩‍🍳"


def cache_root() -> Path:
    env = os.environ.get("KITCHEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crucible-kitchen"


def tokenized_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where tokenized entries live (``cache_dir`` overrides the root)."""
    return (Path(cache_dir) if cache_dir is not None else cache_root()) / "tokenized"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint_of(path: str | os.PathLike) -> str | None:
    """sha256 of a local file's (or directory's files') content; None if not local."""
    p = Path(path)
    if p.is_file():
        return _sha256_file(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + _sha256_file(f).encode() + b"\0")
        return h.hexdigest()
    return None


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """What distinguishes one tokenizer from another, cheaply."""
    try:
        size = len(tokenizer)
    except TypeError:
        size = getattr(tokenizer, "vocab_size", None)
    template = getattr(tokenizer, "chat_template", None)
    if template is not None and not isinstance(template, str):
        template = json.dumps(template, sort_keys=True, default=str)
    try:
        probe = list(tokenizer.encode(_PROBE, add_special_tokens=False))
    except TypeError:
        probe = list(tokenizer.encode(_PROBE))
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": size,
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
        "probe_sha256": hashlib.sha256(json.dumps(probe).encode()).hexdigest(),
    }


def cache_key(source_fingerprint: str, tokenizer: Any, renderer: Renderer, kind: str = "sft",
              extra: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(sha256 hex key, the fields it was computed from)``."""
    fields = {
        "code_version": CODE_VERSION,
        "kind": kind,
        "source": source_fingerprint,
        "tokenizer": tokenizer_identity(tokenizer),
        **renderer.describe(),
        "extra": dict(extra or {}),
    }
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), fields


# -- (de)serialisation ----------------------------------------------------------------

def _runs(weights: list[float]) -> list[list[float]]:
    runs: list[list[float]] = []
    for k, w in enumerate(weights):
        if w == 0:
            continue
        if runs and runs[-1][1] == k and runs[-1][2] == w:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1, w])
    return runs


def _encode_datum(d: Datum) -> dict[str, Any]:
    targets = d.loss_fn_inputs["target_tokens"]
    # full rendered sequence; its weights are [0] + datum weights
    return {"t": list(d.model_input) + [targets[-1]], "w": _runs([0.0] + list(d.loss_fn_inputs["weights"]))}


def _decode_datum(item: Mapping[str, Any]) -> Datum:
    tokens = item["t"]
    weights = [0.0] * len(tokens)
    for start, end, value in item["w"]:
        for k in range(int(start), int(end)):
            weights[k] = float(value)
    return datum_from_rendered(tokens, weights)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            payload = json.load(f)
        if payload.get("code_version") != CODE_VERSION:
            return None
        return payload
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as exc:
        log.warning("ignoring unreadable tokenized cache entry %s (%s); re-tokenizing", path, exc)
        return None


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _load_rows(rows_loader: Callable[..., Iterable[Mapping[str, Any]]], path: Any) -> Iterable[Mapping[str, Any]]:
    try:
        params = [
            p for p in inspect.signature(rows_loader).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return rows_loader(path) if params else rows_loader()


def _cached(kind: str, path: Any, rows_loader: Callable[..., Iterable[Mapping[str, Any]]], tokenizer: Any,
            renderer: Renderer, build: Callable[[Iterable[Mapping[str, Any]]], tuple[Any, DataStats]],
            encode: Callable[[Any], Any], decode: Callable[[Any], Any], cache_dir: str | os.PathLike | None,
            use_cache: bool, source_fingerprint: str | None,
            extra: Mapping[str, Any] | None) -> tuple[Any, DataStats, bool]:
    tokenizer = tokenizer if tokenizer is not None else renderer.tokenizer
    fingerprint = source_fingerprint or (source_fingerprint_of(path) if path is not None else None)
    if not use_cache or fingerprint is None:
        data, stats = build(_load_rows(rows_loader, path))
        return data, stats, False
    key, fields = cache_key(fingerprint, tokenizer, renderer, kind, extra)
    entry = tokenized_dir(cache_dir) / f"{key}.json.gz"
    payload = _read(entry)
    if payload is not None and payload.get("key") == key:
        try:
            data = [decode(item) for item in payload["items"]]
            stats = DataStats(**payload["stats"])
            return data, stats, True
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            log.warning("ignoring malformed tokenized cache entry %s (%s); re-tokenizing", entry, exc)
    data, stats = build(_load_rows(rows_loader, path))
    payload = {
        "code_version": CODE_VERSION,
        "key": key,
        "fields": fields,
        "source_path": str(path) if path is not None else None,
        "stats": stats.to_dict(),
        "items": [encode(d) for d in data],
    }
    try:
        _write_atomic(entry, payload)
    except OSError as exc:  # a read-only cache must not stop training
        log.warning("could not write tokenized cache entry %s (%s)", entry, exc)
    return data, stats, False


def cached_sft_data(path: str | os.PathLike | None, rows_loader: Callable[..., Iterable[Mapping[str, Any]]],
                    tokenizer: Any, renderer: Renderer, *, cache_dir: str | os.PathLike | None = None,
                    use_cache: bool = True, source_fingerprint: str | None = None,
                    extra: Mapping[str, Any] | None = None,
                    source: str | None = None, num_proc: int = 1) -> tuple[list[Datum], DataStats, bool]:
    """SFT datums for the dataset at ``path``: ``(datums, stats, hit)``.

    ``rows_loader`` (``loader()`` or ``loader(path)``) is only called on a miss. Data
    that is not a local file or directory is cached only when ``source_fingerprint``
    identifies its content. ``extra`` adds caller settings that change the rows (split,
    row limit...) to the key. ``tokenizer=None`` means ``renderer.tokenizer``.
    """
    label = source or (str(path) if path is not None else "dataset")
    return _cached(
        "sft", path, rows_loader, tokenizer, renderer,
        lambda rows: build_sft_data(rows, renderer, source=label),
        _encode_datum, _decode_datum, cache_dir, use_cache, source_fingerprint, extra,
    )


def cached_preference_data(path: str | os.PathLike | None, rows_loader: Callable[..., Iterable[Mapping[str, Any]]],
                           tokenizer: Any, renderer: Renderer, *, cache_dir: str | os.PathLike | None = None,
                           use_cache: bool = True, source_fingerprint: str | None = None,
                           extra: Mapping[str, Any] | None = None,
                           source: str | None = None, num_proc: int = 1) -> tuple[list[tuple[Datum, Datum]], DataStats, bool]:
    """Like :func:`cached_sft_data` for preference rows: ``(pairs, stats, hit)``."""
    label = source or (str(path) if path is not None else "dataset")
    return _cached(
        "preference", path, rows_loader, tokenizer, renderer,
        lambda rows: build_preference_data(rows, renderer, source=label),
        lambda pair: [_encode_datum(pair[0]), _encode_datum(pair[1])],
        lambda item: (_decode_datum(item[0]), _decode_datum(item[1])),
        cache_dir, use_cache, source_fingerprint, extra,
    )
