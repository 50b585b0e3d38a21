"""``DatasetStore`` over local files, hub dataset repositories and the ``datasets`` cache.

``HFDatasetStore().load(source, split=None, subset=None, prefer=("train",)) -> Sequence[dict]``

Large sources come back as lazy sequences (:mod:`.rows`) that read rows on access, so a
million-row file is never held as Python dicts; small ones (a ``.json`` array, gzip) as lists.

* ``*.jsonl``: read **directly with ``json``, whatever the size**, and not through
  ``datasets``. Every line is parsed once at load to give a line-numbered error for a
  malformed one; only each line's byte range is kept (:class:`~.rows.JsonlRows`), and a
  row is parsed again when it is read. ``datasets`` would write an Arrow copy into its
  cache and cost ~0.5 s of start-up per load. A side effect: rows come back exactly as
  written (no Arrow type unification, no ``None`` filled in for keys a row lacks).
  ``*.jsonl.gz`` is read the same way into a list (gzip has no random access).
* ``*.json``: a JSON array of objects, or an object holding one such array (e.g.
  ``{"data": [...]}``), or JSON Lines saved as ``.json``; read directly too, for the same
  reasons (``datasets``' json loader handles the same shapes but reports errors poorly).
* ``*.csv`` / ``*.tsv`` / ``*.parquet``: ``datasets.load_dataset("csv"|"parquet",
  data_files=...)`` with offline mode forced on and progress bars off.
* a directory written by ``Dataset.save_to_disk``: ``datasets.load_from_disk``.
* a directory of shards of one type (``part-0.parquet``, ``part-1.parquet``...):
  concatenated in name order.
* anything else that does not look like a path (``org/name``; ``org/name:config`` or
  ``subset=`` for a config): a hub dataset repository, fetched with huggingface_hub's
  ``snapshot_download`` (its own cache, its own progress bars). With ``HF_HUB_OFFLINE=1``
  or no network, the cached snapshot is used; the snapshot's files are read by
  ``datasets.load_dataset(snapshot_dir, config)`` (README ``configs:``, split names from
  file names). A dataset prepared earlier by ``datasets.load_dataset`` in
  ``HF_DATASETS_CACHE`` also loads, offline. Neither: a ``DataError`` naming ``hf download``.

``split`` applies to hub datasets and ``save_to_disk`` dataset dicts (default: the first of
``prefer`` present, else the only split; an unknown one is refused with the list); a single
local file *is* one split and ``split`` is ignored for it. Every failure the user can fix is a ``DataError`` naming the file.

``fingerprint(source) -> str`` is the sha256 of the file's bytes (of every file, with its
relative name, for a directory; of the snapshot's commit, or the cached dataset's
fingerprints, for a hub name),
memoised per (path, size, mtime) so calling it next to ``load`` is cheap.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import os
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

from kitchen.adapters.hf_datasets.files import (
    ALL_EXTS,
    ALLOWED,
    CSV_EXTS,
    JSON_EXTS,
    JSONL_EXTS,
    file_ext,
    file_kind,
    looks_like_path,
)
from kitchen.adapters.hf_datasets.library import first_line, import_datasets, offline, pick_split
from kitchen.adapters.hf_datasets.rows import ArrowRows, ChainRows, JsonlRows
from kitchen.errors import DataError


def _describe_json_type(value: Any) -> str:
    return {list: "a JSON array", str: "a JSON string", bool: "a JSON boolean", int: "a JSON number",
            float: "a JSON number", type(None): "null"}.get(type(value), "not a JSON object")


class HFDatasetStore:
    """Local JSONL/JSON/CSV/Parquet files and cached hub datasets, as sequences of dicts."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        #: where ``datasets`` keeps its Arrow cache (default: ``HF_DATASETS_CACHE``)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self._fingerprints: dict[tuple[str, int, int], str] = {}
        self._prefer: tuple[str, ...] = ("train",)

    # ------------------------------------------------------------------------ public

    def load(self, source: str | os.PathLike[str], split: str | None = None, subset: str | None = None,
             prefer: tuple[str, ...] = ("train",)) -> Sequence[dict[str, Any]]:
        """Rows of ``source``. ``split``/``subset`` pick a split / config of a hub dataset or a
        ``save_to_disk`` DatasetDict; with no ``split``, the first of ``prefer`` that exists,
        else the only split."""
        given = os.fspath(source)
        if not given or not str(given).strip():
            raise DataError("The dataset source is empty. Give a path to a .jsonl/.json/.csv/.parquet file or a hub dataset name.")
        path = Path(given).expanduser()
        self._prefer = tuple(prefer)
        if path.exists() or looks_like_path(given):
            rows = self._load_path(given, path, split)
        else:
            if subset and ":" not in given:
                given = f"{given}:{subset}"
            rows = self._load_hub(given, split)
        if not rows:
            where = f"{given} (split {split})" if split and not path.exists() else given
            raise DataError(
                f"The dataset {where} is empty: it has no rows. "
                "Add at least one example (one JSON object per line for .jsonl), or point the recipe at another file."
            )
        return rows

    def stream(self, source: str | os.PathLike[str], split: str | None = None, subset: str | None = None,
               prefer: tuple[str, ...] = ("train",)) -> Any:
        """``source`` as a ``datasets.IterableDataset`` (``dataset_streaming=true``), never materialised."""
        from kitchen.adapters.hf_datasets.streaming import open_stream

        return open_stream(self, source, split, subset, prefer)

    def fingerprint(self, source: str | os.PathLike[str]) -> str:
        given = os.fspath(source)
        path = Path(given).expanduser()
        if path.is_file():
            st = path.stat()
            key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
            fp = self._fingerprints.get(key)
            if fp is None:
                h = hashlib.sha256()
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                fp = self._fingerprints[key] = h.hexdigest()
            return fp
        if path.is_dir():
            h = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(f.relative_to(path).as_posix().encode() + b"\0")
                h.update(self.fingerprint(f).encode())
            return h.hexdigest()
        if looks_like_path(given):
            raise self._missing(given, path)
        repo, _, config = given.partition(":")
        snapshot = self._hub_snapshot(repo)
        if snapshot is not None:  # the snapshot dir is named by its commit: content-addressed
            return hashlib.sha256(f"hub:{repo}:{config}@{snapshot.name}".encode()).hexdigest()
        ds = self._hub_dataset(given, None)
        parts = [f"hub:{given}"]
        splits = ds.items() if hasattr(ds, "items") else [("", ds)]
        for name, d in sorted(splits, key=lambda kv: kv[0]):
            parts.append(f"{name}={getattr(d, '_fingerprint', '')}:{len(d)}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # ------------------------------------------------------------------------- files

    def _load_path(self, given: str, path: Path, split: str | None) -> Sequence[dict[str, Any]]:
        if not path.exists():
            raise self._missing(given, path)
        if path.is_dir():
            return self._load_dir(given, path, split)
        ext = file_ext(path)
        if ext not in ALL_EXTS:
            raise DataError(
                f"{given}: unsupported dataset file type '{path.suffix or path.name}'. "
                f"Use a {ALLOWED} file (or a hub dataset name)."
            )
        if ext in JSONL_EXTS:
            if path.name.lower().endswith(".gz"):  # no random access into gzip: the rows are held
                return list(self._iter_jsonl(given, path))
            return self._index_jsonl(given, path)
        if ext in JSON_EXTS:
            return self._load_json(given, path)
        if path.stat().st_size == 0:
            raise DataError(f"The dataset {given} is empty: the file has 0 bytes. Add at least one example.")
        if ext in CSV_EXTS:
            kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
            return self._via_datasets(given, "csv", path, **kwargs)
        return self._via_datasets(given, "parquet", path)

    def _missing(self, given: str, path: Path) -> DataError:
        absolute = path.absolute()
        where = f"{given}" if str(absolute) == given else f"{given} (looked for {absolute})"
        parent = absolute.parent
        if not parent.is_dir():
            return DataError(f"Dataset file {where} not found: the directory {parent} does not exist. "
                             "Check the path in the recipe (relative paths are resolved from the current directory).")
        try:
            names = sorted(p.name for p in parent.iterdir() if p.is_file() and file_ext(p) in ALL_EXTS)
        except OSError:
            names = []
        close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.5)
        if not close:
            stem = path.name.split(".")[0].lower()
            close = [n for n in names if stem and stem in n.lower()][:3]
        hint = ""
        if close:
            hint = " Did you mean " + " or ".join(f"'{parent / n}'" for n in close) + "?"
        elif names:
            more = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            hint = f" Data files in {parent}: {more}."
        return DataError(f"Dataset file {where} not found.{hint}")

    def _iter_jsonl(self, given: str, path: Path) -> Iterator[dict[str, Any]]:
        gz = path.name.lower().endswith(".gz")
        try:  # a .gz that is not gzip (or is truncated) is one paragraph, not a traceback
            yield from self._jsonl_rows(given, path, gz)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(
                f"{given}: not a valid gzip file ({type(exc).__name__}: {exc}). A .gz dataset must be gzip-compressed "
                "JSON Lines; decompress it or drop the .gz suffix if it is plain text."
            ) from None

    def _index_jsonl(self, given: str, path: Path) -> JsonlRows:
        """Every line checked (as :meth:`_jsonl_rows`), only its byte range kept: rows are read on access."""
        starts, ends = array("q"), array("q")
        for start, raw, _ in self._jsonl_lines(given, path, False, keep=False):
            starts.append(start)
            ends.append(start + len(raw))
        return JsonlRows(str(path), starts, ends)

    def _jsonl_rows(self, given: str, path: Path, gz: bool) -> Iterator[dict[str, Any]]:
        for _, _, row in self._jsonl_lines(given, path, gz, keep=True):
            yield row

    def _jsonl_lines(self, given: str, path: Path, gz: bool, keep: bool) -> Iterator[tuple[int, bytes, Any]]:
        """``(byte offset, line, row or None)`` per non-blank line; DataError names a bad line."""
        opener = gzip.open if gz else open
        loads = json.loads
        offset = 0
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                start, offset = offset, offset + len(raw)
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw, start = raw[3:], start + 3  # UTF-8 byte-order mark
                if raw.isspace() or not raw:
                    continue
                try:
                    row = loads(raw)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{given}: line {lineno} is not valid JSON ({exc.msg}: column {exc.colno}). "
                        "Each line must be one JSON object."
                    ) from None
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{given}: line {lineno} is not valid UTF-8 text (byte {exc.start + 1}). "
                        "Save the file as UTF-8 with one JSON object per line."
                    ) from None
                except RecursionError:  # a deeply nested line
                    raise DataError(_too_deep(f"{given}: line {lineno}")) from None
                if type(row) is not dict:
                    raise DataError(
                        f"{given}: line {lineno} is {_describe_json_type(row)}, not a JSON object. "
                        'Each line must be one JSON object such as {"prompt": "...", "completion": "..."}.'
                    )
                yield start, raw.rstrip(b"\r\n"), row if keep else None

    def _load_json(self, given: str, path: Path) -> list[dict[str, Any]]:
        raw = path.read_bytes()
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            raise DataError(f"The dataset {given} is empty: the file has no content. Add at least one example.")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            # JSON Lines saved as .json? Then report line by line; else the whole-file error.
            first = raw.lstrip()[:1]
            if first == b"{" and exc.msg == "Extra data":
                return list(self._iter_jsonl(given, path))
            raise DataError(
                f"{given}: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}). "
                "A .json dataset must be an array of objects, an object holding one such array, "
                "or one JSON object per line."
            ) from None
        except UnicodeDecodeError:
            raise DataError(f"{given}: not valid UTF-8 text. Save the file as UTF-8.") from None
        except RecursionError:  # deeply nested JSON
            raise DataError(_too_deep(given)) from None
        rows = data
        if isinstance(data, dict):
            lists = [(k, v) for k, v in data.items() if isinstance(v, list)]
            if len(lists) == 1:
                rows = lists[0][1]
            elif lists:
                keys = ", ".join(k for k, _ in lists)
                raise DataError(
                    f"{given}: the top-level object holds several arrays ({keys}); it is not clear which one is "
                    "the dataset. Keep a single array of objects, or use JSON Lines (.jsonl)."
                )
            else:
                rows = [data]  # a single example
        if not isinstance(rows, list):
            raise DataError(f"{given}: the file holds {_describe_json_type(rows)}; a .json dataset must be an array of objects.")
        for i, row in enumerate(rows):
            if type(row) is not dict:
                raise DataError(
                    f"{given}: item {i} of the array is {_describe_json_type(row)}, not a JSON object. "
                    "Each example must be one JSON object."
                )
        return rows

    def _load_dir(self, given: str, path: Path, split: str | None) -> Sequence[dict[str, Any]]:
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            datasets = import_datasets()
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"{given}: could not read the saved dataset ({type(exc).__name__}: {exc}).") from None
            return _rows(pick_split(given, ds, split, self._prefer))
        files = sorted(p for p in path.iterdir() if p.is_file() and file_ext(p) in ALL_EXTS)
        if len(files) == 1:
            return self._load_path(str(Path(given) / files[0].name), files[0], split)
        kinds = {file_kind(p) for p in files}
        if len(kinds) == 1:  # a directory of shards of one type: concatenated in name order
            kind = kinds.pop()
            if kind in ("parquet", "csv"):
                return self._via_datasets(given, kind, files)
            return ChainRows([self._load_path(str(Path(given) / f.name), f, split) for f in files])
        listing = ", ".join(p.name for p in files[:5]) or "no data files"
        raise DataError(
            f"{given} is a directory ({listing}). Point the recipe at one {ALLOWED} file, a directory of "
            "shards of one type, or a directory written by Dataset.save_to_disk."
        )

    def _via_datasets(self, given: str, builder: str, path: Path | list[Path], **kwargs: Any) -> Sequence[dict[str, Any]]:
        datasets = import_datasets()
        files = [str(p.resolve()) for p in path] if isinstance(path, list) else str(path.resolve())
        try:
            with offline(datasets):
                ds = datasets.load_dataset(
                    builder, data_files=files, split="train", cache_dir=self.cache_dir, **kwargs
                )
        except Exception as exc:  # noqa: BLE001 - parser errors come wrapped in DatasetGenerationError
            cause = exc.__cause__ or exc.__context__ or exc
            msg = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            kind = {"csv": "CSV", "parquet": "Parquet"}.get(builder, builder)
            raise DataError(f"{given}: could not read it as {kind} ({type(cause).__name__}: {msg}).") from None
        return _rows(ds)

    # --------------------------------------------------------------------------- hub

    def _load_hub(self, name: str, split: str | None) -> Sequence[dict[str, Any]]:
        ds = self._hub_dataset(name, split)
        return _rows(pick_split(name, ds, split, self._prefer))

    def _hub_snapshot(self, repo: str) -> Path | None:
        """The local snapshot of dataset repo ``repo`` in huggingface_hub's cache.

        Online (``HF_HUB_OFFLINE`` unset) this downloads or updates it with
        huggingface_hub's progress bars; offline, or when the hub cannot be reached, it is
        the cached copy. None when there is none.
        """
        try:
            from huggingface_hub import snapshot_download
        except ImportError:  # pragma: no cover - huggingface_hub comes with datasets
            return None
        try:
            return Path(snapshot_download(repo_id=repo, repo_type="dataset"))
        except Exception:  # noqa: BLE001 - offline with no cache, no network, unknown repo...
            try:
                return Path(snapshot_download(repo_id=repo, repo_type="dataset", local_files_only=True))
            except Exception:  # noqa: BLE001
                return None

    def load_snapshot(self, repo: str, config: str, snapshot: Path, **load_kw: Any) -> Any:
        """``datasets.load_dataset`` over a hub repo's local snapshot (its README ``configs:``,
        split names from file names), offline; a failure is one paragraph naming the repo."""
        datasets = import_datasets()
        try:
            with offline(datasets):
                return datasets.load_dataset(str(snapshot), config or None, cache_dir=self.cache_dir, **load_kw)
        except ValueError as exc:
            if config and ("config" in str(exc).lower() or "builderconfig" in str(exc).lower()):
                raise DataError(f"Dataset {repo} has no subset '{config}' ({first_line(exc)}).") from None
            raise DataError(f"Dataset {repo}: could not read its files ({first_line(exc)}).") from None
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"Dataset {repo}: could not read its files ({type(exc).__name__}: {first_line(exc)}).") from None

    def _hub_dataset(self, name: str, split: str | None) -> Any:
        datasets = import_datasets()
        repo, _, config = name.partition(":")
        snapshot = self._hub_snapshot(repo)
        if snapshot is not None:
            return self.load_snapshot(repo, config, snapshot)
        args = (repo, config) if config else (repo,)
        try:  # datasets' own Arrow cache (a dataset prepared earlier with datasets.load_dataset)
            with offline(datasets):
                return datasets.load_dataset(*args, split=split, cache_dir=self.cache_dir, download_mode="reuse_dataset_if_exists")
        except ValueError as exc:
            if split and "split" in str(exc).lower():  # list the splits that do exist
                return self._hub_dataset(name, None)
            raise self._not_cached(name, exc) from None
        except Exception as exc:  # noqa: BLE001 - ConnectionError, FileNotFoundError, DatasetNotFoundError...
            raise self._not_cached(name, exc) from None

    def _not_cached(self, name: str, exc: Exception) -> DataError:
        repo, _, config = name.partition(":")
        from huggingface_hub import constants

        prepared = self.cache_dir or os.environ.get("HF_DATASETS_CACHE") or str(Path(constants.HF_HOME) / "datasets")
        return DataError(
            f"Dataset '{name}' is neither a local file nor in the local Hugging Face cache (downloads in "
            f"{constants.HF_HUB_CACHE}, prepared datasets in {prepared}), and it could not "
            f"be downloaded ({type(exc).__name__}: {first_line(exc)}). Fetch it once on a machine with network: "
            f"hf download {repo} --repo-type dataset, or save it to a .jsonl file "
            "and point the recipe at that file. If you meant a local file, check the path and extension "
            f"({ALLOWED})."
        )


# ----------------------------------------------------------------------------- helpers


def _too_deep(where: str) -> str:
    return (f"{where} nests JSON arrays/objects too deeply to parse (hundreds of levels). "
            "An example is an object with a messages list (or prompt/completion strings); flatten the data.")


def _rows(ds: Any) -> Sequence[dict[str, Any]]:
    if hasattr(ds, "to_list"):  # a datasets.Dataset: Arrow, memory-mapped; rows become dicts when read
        return ArrowRows(ds)
    return [dict(r) for r in ds]


__all__ = ["HFDatasetStore"]
