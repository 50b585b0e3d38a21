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

Entries live in ``<root>/tokenized/<key>.arrow/`` where root is kitchen's one cache root
(:func:`kitchen.io.cache.cache_root`: ``$KITCHEN_CACHE_DIR``, else the XDG cache). Each entry
is an Arrow IPC file with every example's tokens and weights,
served memory-mapped (see "Arrow entries" below). Writes are atomic (temp dir +
``os.replace``); an unreadable entry is treated as a miss and rewritten.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from kitchen.io.atomic import atomic_publish_dir
from kitchen.io.cache import cache_root
from kitchen.ports.types import Datum
from kitchen.train.datum import DataStats, datum_from_rendered
from kitchen.train.renderers import Renderer

CODE_VERSION = 2  # 2: Arrow entries; per-message weights, text rows, linear rendering
log = logging.getLogger("kitchen.data")

_PROBE = "Chef's probe: 250 ml = 1 cup.\n\n<|im_end|><|eot_id|></s> User: héllo 👩‍🍳"


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


# -- Arrow entries ----------------------------------------------------------------------
#
# An entry is a directory ``<key>.arrow/``: ``table.arrow`` (an Arrow IPC file: one row
# per source row with its rendered ``tokens``/``weights``, for preference data
# ``chosen_*``/``rejected_*``, plus ``truncated``/``empty``/``n_tokens``/``n_trained``)
# and ``kitchen.json`` (key, fields, stats), written last. The directory is built under a
# temp name and renamed into place, so a reader sees a complete entry or none. Data is
# served from the memory-mapped table (:class:`ArrowDatums`), so a million tokenized rows
# cost disk, not RAM. Tokenizing a miss streams record batches into ``table.arrow`` as
# they are rendered (one process), or goes through ``datasets.map`` (``num_proc``
# processes, each writing its own Arrow shard, copied into ``table.arrow`` batch by batch):
# neither the rows nor their tokens are ever all in memory at once.

ENTRY_SUFFIX = ".arrow"
MAP_BATCH = 1024  # rows per render call and per Arrow record batch


def _row_slices(rows: Any, size: int) -> Iterator[tuple[int, list]]:
    """``(start, rows[start:start + size])`` over a Sequence (lazy or not) or any iterable."""
    if isinstance(rows, Sequence):
        for start in range(0, len(rows), size):
            yield start, list(rows[start:start + size])
        return
    it, start = iter(rows), 0
    while chunk := list(itertools.islice(it, size)):
        yield start, chunk
        start += len(chunk)


def _list_array(values: list[list], dtype: Any):
    """A list<dtype> Arrow array from Python lists, built through numpy (10x faster than pa.array on lists)."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(values), dtype=dtype, count=int(offsets[-1]))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)).cast(
        pa.list_(pa.from_numpy_dtype(np.dtype(dtype))))


def _record_batch(rows: list, start: int, renderer: Renderer, kind: str, source: str):
    """One Arrow record batch of rendered rows (``start``: index of the first row, for errors)."""
    import numpy as np
    import pyarrow as pa

    from kitchen.train.datum import render_preference_examples, render_sft_examples

    if kind == "preference":
        groups, prefixes = render_preference_examples(rows, renderer, source, start=start), ("chosen_", "rejected_")
    else:
        groups, prefixes = [(e,) for e in render_sft_examples(rows, renderer, source, start=start)], ("",)
    arrays = []
    for k, _ in enumerate(prefixes):
        arrays.append(_list_array([g[k].tokens for g in groups], np.int32))
        arrays.append(_list_array([g[k].weights for g in groups], np.float32))
    empty = [any(e.empty or len(e.tokens) < 2 for e in g) for g in groups]
    arrays.append(pa.array([any(e.truncated for e in g) for g in groups], pa.bool_()))
    arrays.append(pa.array(empty, pa.bool_()))
    arrays.append(pa.array([0 if x else sum(len(e.tokens) - 1 for e in g) for g, x in zip(groups, empty)], pa.int64()))
    arrays.append(pa.array([0 if x else sum(e.num_trained_tokens for e in g) for g, x in zip(groups, empty)], pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, schema=_schema(kind))


class _Shared:
    """The rows and the renderer, handed to ``datasets.map``'s worker processes.

    ``datasets`` pickles a map function's arguments to every worker. Forked workers
    already have the parent's memory, so under ``fork`` this pickles as a key into
    :data:`_SHARED` only; pickling the rows and the tokenizer and rebuilding them in each
    worker cost more than the workers saved. Other start methods get the full payload.
    """

    def __init__(self, rows: Any, renderer: Renderer) -> None:
        self.key = f"{os.getpid()}:{id(self)}"
        self.rows, self.renderer = rows, renderer

    def __getstate__(self) -> dict[str, Any]:
        import multiprocess

        if multiprocess.get_start_method() == "fork":
            return {"key": self.key}
        return {"key": self.key, "rows": self.rows, "renderer": self.renderer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.key = state["key"]
        here = _SHARED.get(self.key)
        self.rows, self.renderer = (here.rows, here.renderer) if here is not None else (state["rows"], state["renderer"])


_SHARED: dict[str, _Shared] = {}  # inherited by forked map workers


def _map_block(batch: dict[str, list], shared: _Shared, kind: str, source: str):
    """``datasets.map`` function: the rows at this batch's indices, rendered (a pyarrow Table)."""
    import pyarrow as pa

    first, last = batch["i"][0], batch["i"][-1] + 1
    rows = list(shared.rows[first:last])
    return pa.Table.from_batches([_record_batch(rows, first, shared.renderer, kind, source)])


def _schema(kind: str):
    import pyarrow as pa

    fields = []
    for p in (("chosen_", "rejected_") if kind == "preference" else ("",)):
        fields += [pa.field(f"{p}tokens", pa.list_(pa.int32())), pa.field(f"{p}weights", pa.list_(pa.float32()))]
    fields += [pa.field("truncated", pa.bool_()), pa.field("empty", pa.bool_()),
               pa.field("n_tokens", pa.int64()), pa.field("n_trained", pa.int64())]
    return pa.schema(fields)


def _mapped_batches(rows: Sequence, renderer: Renderer, kind: str, source: str, num_proc: int, workdir: Path):
    """Record batches rendered by ``datasets.map`` in ``num_proc`` processes, in row order.

    Each worker writes its shard of the rows to an Arrow file under ``workdir``; the
    shards are read back batch by batch (not memory-mapped, so they do not count as this
    process's memory). The map runs over a column of row indices: the rows themselves go
    to the workers as one argument (a lazy row source pickles as its file name and
    offsets), and each worker reads its own slice.
    """
    import datasets
    import numpy as np
    import pyarrow as pa
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    bars = is_progress_bar_enabled()
    disable_progress_bars()
    # forked workers must not start the Rust tokenizer's own thread pool (one core each already)
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    shared = _Shared(rows, renderer)
    _SHARED[shared.key] = shared
    try:
        index = datasets.Dataset.from_dict({"i": np.arange(len(rows), dtype=np.int64)})
        out = index.map(_map_block, batched=True, batch_size=MAP_BATCH, num_proc=num_proc, remove_columns=["i"],
                        features=datasets.Features.from_arrow_schema(_schema(kind)),
                        fn_kwargs={"shared": shared, "kind": kind, "source": source},
                        cache_file_name=str(workdir / "shard.arrow"), load_from_cache_file=False,
                        new_fingerprint=hashlib.sha256(f"{source}:{len(rows)}:{kind}:{os.getpid()}:{time.time()}".encode()).hexdigest()[:16])
        shards = [f["filename"] for f in out.cache_files]
        del out
    finally:
        _SHARED.pop(shared.key, None)
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
        if bars:
            enable_progress_bars()
    schema = _schema(kind)
    for shard in shards:
        with pa.OSFile(shard, "rb") as f:
            for batch in pa.ipc.open_stream(f):
                yield batch.select(schema.names).cast(schema) if batch.schema != schema else batch


def tokenize_to_file(rows: Iterable[Mapping[str, Any]], renderer: Renderer, kind: str, source: str, path: Path,
                     num_proc: int = 1) -> None:
    """Render ``rows`` into the Arrow IPC file ``path``, streaming: memory stays flat in the row count.

    One process renders in place (pyarrow only: importing ``datasets`` costs seconds);
    ``num_proc > 1`` goes through ``datasets.map`` in that many processes.
    """
    import pyarrow as pa

    if num_proc > 1 and not isinstance(rows, Sequence):
        rows = list(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _schema(kind)) as writer:
        if num_proc <= 1 or len(rows) < 2 * MAP_BATCH:
            for start, chunk in _row_slices(rows, MAP_BATCH):
                writer.write_batch(_record_batch(chunk, start, renderer, kind, source))
            return
        workdir = Path(tempfile.mkdtemp(prefix="map.", dir=path.parent))
        try:
            for batch in _mapped_batches(rows, renderer, kind, source, num_proc, workdir):
                writer.write_batch(batch)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def tokenize_to_table(rows: Iterable[Mapping[str, Any]], renderer: Renderer, kind: str, source: str,
                      num_proc: int = 1):
    """Render ``rows`` into a memory-mapped ``pyarrow.Table`` (a file in a temp dir, removed once mapped)."""
    tmp = Path(tempfile.mkdtemp(prefix="kitchen-tokenized."))
    try:
        tokenize_to_file(rows, renderer, kind, source, tmp / "table.arrow", num_proc)
        return _open_table(tmp / "table.arrow")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # POSIX keeps a mapped file readable after unlinking


def table_stats(table) -> DataStats:
    """DataStats from a tokenized table's columns (counted in Arrow, not in Python)."""
    import pyarrow.compute as pc

    t = table.data.table if hasattr(table, "data") else table
    n = t.num_rows
    if n == 0:
        return DataStats()
    empty = t.column("empty")
    kept_mask = pc.invert(empty)
    lengths = pc.list_value_length(t.column("tokens" if "tokens" in t.column_names else "chosen_tokens"))
    if "chosen_tokens" in t.column_names:
        lengths = pc.max_element_wise(lengths, pc.list_value_length(t.column("rejected_tokens")))
    kept_lengths = pc.filter(lengths, kept_mask)
    return DataStats(
        examples=n,
        kept=int(pc.sum(kept_mask.cast("int64")).as_py() or 0),
        truncated=int(pc.sum(t.column("truncated").cast("int64")).as_py() or 0),
        dropped_empty=int(pc.sum(empty.cast("int64")).as_py() or 0),
        trained_tokens=int(pc.sum(t.column("n_trained")).as_py() or 0),
        total_tokens=int(pc.sum(t.column("n_tokens")).as_py() or 0),
        max_tokens=int(pc.max(kept_lengths).as_py() or 0) if len(kept_lengths) else 0,
    )


class ArrowDatums(Sequence):
    """The kept examples of a tokenized table as Datums (or (chosen, rejected) pairs), built on access.

    Indexing is by kept example, in source order, so the batch plan (a pure function
    of seed, step and ``len``) sees the same data whether it came from a miss or a hit.
    """

    def __init__(self, table, kind: str) -> None:
        import pyarrow.compute as pc

        self._t = table.data.table if hasattr(table, "data") else table
        self._kind = kind
        self._rows = pc.indices_nonzero(pc.invert(self._t.column("empty"))).to_numpy()
        prefixes = ("chosen_", "rejected_") if kind == "preference" else ("",)
        self._cols = [(self._t.column(f"{p}tokens"), self._t.column(f"{p}weights")) for p in prefixes]
        self._memo: dict[int, Any] = {}

    MEMO_LIMIT = 8192  # decoded examples kept: a small set decodes once per run, a large one stays bounded

    def __len__(self) -> int:
        return len(self._rows)

    def _one(self, k: int):
        found = self._memo.get(k)
        if found is not None:
            return found
        r = int(self._rows[k])
        items = [datum_from_rendered(tok[r].as_py(), w[r].as_py()) for tok, w in self._cols]
        one = items[0] if self._kind != "preference" else (items[0], items[1])
        if len(self._memo) >= self.MEMO_LIMIT:
            self._memo.clear()
        self._memo[k] = one
        return one

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self._one(i) for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self._one(k)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, ArrowDatums)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"<ArrowDatums {self._kind}: {len(self)} examples>"


def _open_table(path: Path):
    """The Arrow file at ``path``, memory-mapped (pages are read on access, not up front)."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _read_entry(entry: Path, key: str, kind: str):
    meta = entry / "kitchen.json"
    try:
        payload = json.loads(meta.read_text())
        if payload.get("code_version") != CODE_VERSION or payload.get("key") != key:
            return None
        return ArrowDatums(_open_table(entry / "table.arrow"), kind), DataStats(**payload["stats"])
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is a miss, rewritten below
        log.warning("ignoring unreadable tokenized cache entry %s (%s); re-tokenizing", entry, exc)
        return None


def _build_entry(entry: Path, payload: dict[str, Any], render: Callable[[Path], None]):
    """Render into ``table.arrow`` under a temp dir, add ``kitchen.json``, rename it to ``entry``.

    Returns ``(table, stats)``, the table memory-mapped from the entry. ``render(path)``
    writes the Arrow file; ``payload`` gets the stats before it is written.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", suffix=".tmp", dir=entry.parent))
    try:
        render(tmp / "table.arrow")
        stats = table_stats(_open_table(tmp / "table.arrow"))
        (tmp / "kitchen.json").write_text(json.dumps({**payload, "stats": stats.to_dict()}, default=str))
        atomic_publish_dir(tmp, entry, usual_modes=False)  # fsynced, swapped over a stale entry
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _open_table(entry / "table.arrow"), stats


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
            renderer: Renderer, cache_dir: str | os.PathLike | None, use_cache: bool, source_fingerprint: str | None,
            extra: Mapping[str, Any] | None, label: str, num_proc: int) -> tuple[Any, DataStats, bool]:
    tokenizer = tokenizer if tokenizer is not None else renderer.tokenizer
    fingerprint = source_fingerprint or (source_fingerprint_of(path) if path is not None else None)

    def render(target: Path) -> None:
        tokenize_to_file(_load_rows(rows_loader, path), renderer, kind, label, target, num_proc)

    def uncached() -> tuple[Any, DataStats, bool]:
        table = tokenize_to_table(_load_rows(rows_loader, path), renderer, kind, label, num_proc)
        stats = table_stats(table)
        return ArrowDatums(table, kind), stats, False

    if not use_cache or fingerprint is None:
        return uncached()
    key, fields = cache_key(fingerprint, tokenizer, renderer, kind, extra)
    entry = tokenized_dir(cache_dir) / f"{key}{ENTRY_SUFFIX}"
    found = _read_entry(entry, key, kind)
    if found is not None:
        return found[0], found[1], True
    payload = {"code_version": CODE_VERSION, "key": key, "fields": fields,
               "source_path": str(path) if path is not None else None}
    try:
        table, stats = _build_entry(entry, payload, render)
    except OSError as exc:  # a read-only or full cache must not stop training
        log.warning("could not write tokenized cache entry %s (%s)", entry, exc)
        return uncached()
    return ArrowDatums(table, kind), stats, False


def cached_sft_data(path: str | os.PathLike | None, rows_loader: Callable[..., Iterable[Mapping[str, Any]]],
                    tokenizer: Any, renderer: Renderer, *, cache_dir: str | os.PathLike | None = None,
                    use_cache: bool = True, source_fingerprint: str | None = None,
                    extra: Mapping[str, Any] | None = None,
                    source: str | None = None, num_proc: int = 1) -> tuple[Sequence[Datum], DataStats, bool]:
    """SFT datums for the dataset at ``path``: ``(datums, stats, hit)``.

    ``rows_loader`` (``loader()`` or ``loader(path)``) is only called on a miss. Data
    that is not a local file or directory is cached only when ``source_fingerprint``
    identifies its content. ``extra`` adds caller settings that change the rows (split,
    format, row limit...) to the key. ``tokenizer=None`` means ``renderer.tokenizer``.
    ``num_proc`` processes tokenize a miss. The datums are served from the Arrow entry.
    """
    label = source or (str(path) if path is not None else "dataset")
    return _cached("sft", path, rows_loader, tokenizer, renderer, cache_dir, use_cache, source_fingerprint, extra,
                   label, num_proc)


def cached_preference_data(path: str | os.PathLike | None, rows_loader: Callable[..., Iterable[Mapping[str, Any]]],
                           tokenizer: Any, renderer: Renderer, *, cache_dir: str | os.PathLike | None = None,
                           use_cache: bool = True, source_fingerprint: str | None = None,
                           extra: Mapping[str, Any] | None = None,
                           source: str | None = None, num_proc: int = 1) -> tuple[Sequence[tuple[Datum, Datum]], DataStats, bool]:
    """Like :func:`cached_sft_data` for preference rows: ``(pairs, stats, hit)``."""
    label = source or (str(path) if path is not None else "dataset")
    return _cached("preference", path, rows_loader, tokenizer, renderer, cache_dir, use_cache, source_fingerprint,
                   extra, label, num_proc)
