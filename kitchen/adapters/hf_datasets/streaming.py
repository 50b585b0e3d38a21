"""The streaming half of the dataset store: a source as a ``datasets.IterableDataset``.

``open_stream(store, source, split, subset, prefer)`` reads the same sources as
:meth:`HFDatasetStore.load` without materialising them: local JSONL/JSON/CSV/Parquet
files and directories of shards through ``datasets.load_dataset(..., streaming=True)``
(each file a shard), hub dataset repositories from their huggingface_hub snapshot the
same way, and Arrow data that is already on disk (``save_to_disk`` directories, a hub
dataset prepared earlier in ``HF_DATASETS_CACHE``) memory-mapped and walked with
``to_iterable_dataset``. Rows are yielded as ``datasets`` decodes them; shuffling,
normalising and tokenizing them is the caller's business.

Why ``datasets`` here and not the store's own JSON reader: streaming is for data that
does not fit, and ``datasets`` reads it shard by shard in bounded memory, and can
shuffle shards and a row buffer by seed (``IterableDataset.shuffle``), which is what a
reproducible data order needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from kitchen.adapters.hf_datasets.files import (
    ALL_EXTS,
    ALLOWED,
    CSV_EXTS,
    JSON_EXTS,
    JSONL_EXTS,
    file_ext,
    looks_like_path,
)
from kitchen.adapters.hf_datasets.library import first_line, import_datasets, offline, pick_split
from kitchen.errors import DataError


def _builder(path: Path) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The ``datasets`` packaged builder (and its options, as pairs) that reads ``path``."""
    ext = file_ext(path)
    if ext in JSONL_EXTS or ext in JSON_EXTS:
        return "json", ()
    if ext in CSV_EXTS:
        return "csv", (("delimiter", "\t"),) if ext == ".tsv" else ()
    return "parquet", ()


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


ROW_ORIGIN = "__kitchen_row_origin__"  # (file, row index in it) on rows read from local JSON files, for error messages


def _json_rows(store: Any, shards: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    """Rows of local JSON Lines (read line by line) or JSON files, each tagged with where it came from."""
    for label, name in shards:
        path = Path(name)
        rows = store._load_json(label, path) if file_ext(path) in JSON_EXTS else store._iter_jsonl(label, path)
        for i, row in enumerate(rows):
            yield {**row, ROW_ORIGIN: (name, i)}


def _stream_files(store: Any, given: str, files: list[Path], cache_dir: str | None) -> Any:
    datasets = import_datasets()
    builders = {_builder(f) for f in map(Path, files)}
    if len(builders) != 1:
        names = ", ".join(f.name for f in files[:5])
        raise DataError(f"{given} mixes file types ({names}); a directory of shards must hold one type ({ALLOWED}).")
    (builder, kwargs), = builders
    if builder == "json":
        # The store's own reader, one shard per file: a malformed line is named by its line
        # number, and rows come as written. (datasets' json builder parses whole blocks and
        # reports neither.) A .json array is parsed one file at a time; JSON Lines stream.
        label = (lambda f: given) if len(files) == 1 else (lambda f: str(Path(given) / f.name))
        shards = [(label(f), str(f.resolve())) for f in files]
        return datasets.IterableDataset.from_generator(_json_rows, gen_kwargs={"store": store, "shards": shards})
    try:
        with offline(datasets):
            return datasets.load_dataset(builder, data_files=[str(f.resolve()) for f in files], split="train",
                                         streaming=True, cache_dir=cache_dir, **dict(kwargs))
    except Exception as exc:  # noqa: BLE001 - the builder's own errors, in one line
        raise DataError(f"{given}: could not open it as a stream ({type(exc).__name__}: {first_line(exc)}).") from None


def open_stream(store: Any, source: str | os.PathLike[str], split: str | None = None, subset: str | None = None,
                prefer: tuple[str, ...] = ("train",)) -> Any:
    """``source`` as an IterableDataset (one split); every failure the user can fix is a DataError."""
    given = os.fspath(source)
    if not given or not str(given).strip():
        raise DataError("The dataset source is empty. Give a path to a .jsonl/.json/.csv/.parquet file or a hub dataset name.")
    path = Path(given).expanduser()
    cache_dir = getattr(store, "cache_dir", None)
    if path.exists() or looks_like_path(given):
        if not path.exists():
            raise store._missing(given, path)
        if path.is_dir():
            if _is_saved_dataset(path):
                datasets = import_datasets()
                try:
                    saved = datasets.load_from_disk(str(path))  # memory-mapped Arrow: nothing is read into memory yet
                except Exception as exc:  # noqa: BLE001
                    raise DataError(f"{given}: could not read the saved dataset ({type(exc).__name__}: {exc}).") from None
                return pick_split(given, saved, split, prefer).to_iterable_dataset()
            files = sorted(p for p in path.iterdir() if p.is_file() and file_ext(p) in ALL_EXTS)
            if not files:
                raise DataError(f"{given} is a directory with no {ALLOWED} files and no Dataset.save_to_disk data.")
            return _stream_files(store, given, files, cache_dir)
        if file_ext(path) not in ALL_EXTS:
            raise DataError(f"{given}: unsupported dataset file type '{path.suffix or path.name}'. Use a {ALLOWED} file "
                            "(or a hub dataset name).")
        if path.stat().st_size == 0:
            raise DataError(f"The dataset {given} is empty: the file has 0 bytes. Add at least one example.")
        return _stream_files(store, given, [path], cache_dir)
    name = f"{given}:{subset}" if subset and ":" not in given else given
    repo, _, config = name.partition(":")
    snapshot = store._hub_snapshot(repo)
    if snapshot is None:  # a dataset prepared earlier by datasets.load_dataset: memory-mapped from its Arrow cache
        return pick_split(name, store._hub_dataset(name, split), split, prefer).to_iterable_dataset()
    return pick_split(name, store.load_snapshot(repo, config, snapshot, streaming=True), split, prefer)


def known_num_rows(stream: Any) -> int | None:
    """The split's row count when the source's metadata states it (hub ``dataset_info``, Arrow on disk), else None."""
    info = getattr(stream, "info", None)
    splits = getattr(info, "splits", None) or {}
    name = str(getattr(stream, "split", "") or "")
    entry = splits.get(name) if hasattr(splits, "get") else None
    rows = getattr(entry, "num_examples", None)
    return int(rows) if rows else None


def row_origin(row: Any) -> tuple[str, int] | None:
    """Pop and return the (file, row index) a local JSON row was tagged with (None for other sources)."""
    return row.pop(ROW_ORIGIN, None) if isinstance(row, dict) else None


__all__ = ["ROW_ORIGIN", "known_num_rows", "open_stream", "row_origin"]
