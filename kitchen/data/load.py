"""Load a run's train and test rows: source, split, subset, format, column mapping, carve-off.

One function, :func:`load_training_rows`, so that ``run`` (the load stage), ``validate``
and ``kitchen data inspect`` read data the same way and can never disagree about it. It
talks to the DatasetStore port for the bytes and to :mod:`kitchen.train.formats` (pure)
for the shape; what it returns also carries what the token cache must key on, because
the same file read with another split, format or column mapping gives other rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from kitchen.config.spec import dataset_reading
from kitchen.errors import ConfigError, DataError
from kitchen.train.formats import FormatChoice, NormalisedRows, choose_format

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")


@dataclass
class LoadedSplit:
    """The normalised rows of one split and what identifies them."""

    rows: Sequence[dict[str, Any]]  # a list, or NormalisedRows reading the source on access
    source: str | None = None  # what the user named (for messages and the cache entry)
    format: FormatChoice | None = None
    fingerprint: str | None = None  # content of the source (the token cache key's base)
    extra: dict[str, Any] = field(default_factory=dict)  # everything else that changes the rows

    def label(self) -> str:
        return self.format.label() if self.format else "none"


@dataclass
class LoadedData:
    train: LoadedSplit
    test: LoadedSplit

    def summary(self) -> str:
        """The ``dataset:`` line: row counts and the format of each split."""
        text = f"dataset: {len(self.train.rows)} train rows, format {self.train.label()}"
        if self.test.rows:
            same = self.test.format == self.train.format
            text += f"; {len(self.test.rows)} test rows" + ("" if same else f", format {self.test.label()}")
            if self.test.extra.get("carved_from_train"):
                text += f" (test_split_fraction={self.test.extra['test_split_fraction']} of the train file, seed {self.test.extra['seed']})"
        else:
            text += "; no test rows"
        return text


def data_kind(spec: Any) -> str:
    """``preference`` for the DPO workflow, ``sft`` for every other workflow that reads a dataset."""
    return "preference" if spec.workflow.name == "preference" else "sft"


def _jsonl_line_namer(source: str) -> Callable[[int], str]:
    """Row index -> "line N" of a JSON Lines file (blank lines skipped, as the store does)."""
    path = Path(source).expanduser()
    if not (path.is_file() and path.name.lower().endswith(JSONL_SUFFIXES)):
        return lambda i: f"row {i}"

    def where(i: int) -> str:
        import gzip

        opener = gzip.open if path.name.lower().endswith(".gz") else open
        seen = -1
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if raw.strip():
                    seen += 1
                    if seen == i:
                        return f"line {lineno}"
        return f"row {i}"

    return where


def load_split(store: Any, source: str, *, kind: str = "sft", split: str | None = None, subset: str | None = None,
               fmt: str = "auto", columns: dict[str, str] | None = None,
               prefer: tuple[str, ...] = ("train",)) -> LoadedSplit:
    """One source's rows, read through ``store``, format chosen and every row normalised."""
    try:
        raw = store.load(source, split=split, subset=subset, prefer=prefer)
    except TypeError:  # a DatasetStore written against the older port: load(source, split)
        raw = store.load(source, split)
    choice = choose_format(source, raw[0] if raw else {}, fmt, kind, columns)
    rows = NormalisedRows(raw, choice, source, kind, where=_jsonl_line_namer(source))  # normalised when read
    rows.check()  # a row that breaks the format fails here, before anything is written
    fingerprint = store.fingerprint(source) if hasattr(store, "fingerprint") else None
    extra = {"format": choice.name, "columns": list(choice.columns), "split": split, "subset": subset}
    return LoadedSplit(rows, source, choice, fingerprint, extra)


def carve_test(train: LoadedSplit, fraction: float, seed: int) -> tuple[LoadedSplit, LoadedSplit]:
    """Split ``train`` into (train, test): a ``fraction`` of the rows, chosen by ``seed``.

    A pure function of (rows, fraction, seed), so a resumed or repeated run carves the
    same test set; both parts keep the file's row order.
    """
    n = len(train.rows)
    k = max(1, round(n * fraction))
    if n - k < 1:
        raise DataError(
            f"test_split_fraction={fraction} would leave no training rows: {train.source} has only {n} row(s). "
            "Lower the fraction or add rows."
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test_idx = set(order[:k])
    info = {"test_split_fraction": fraction, "seed": seed}
    keep = [i for i in range(n) if i not in test_idx]
    carved = sorted(test_idx)
    if hasattr(train.rows, "take"):  # a view of the same rows, not a copy
        train_rows, test_rows = train.rows.take(keep), train.rows.take(carved)
    else:
        train_rows, test_rows = [train.rows[i] for i in keep], [train.rows[i] for i in carved]
    return (
        LoadedSplit(train_rows, train.source, train.format, train.fingerprint, {**train.extra, **info, "part": "train"}),
        LoadedSplit(test_rows, train.source, train.format, train.fingerprint,
                    {**train.extra, **info, "part": "test", "carved_from_train": True}),
    )


def load_training_rows(spec: Any, store: Any, kind: str | None = None) -> LoadedData:
    """The run's train and test rows as the spec describes them (``dataset*`` / ``test_dataset*`` keys)."""
    kind = kind or data_kind(spec)
    if not spec.dataset:
        raise ConfigError(f"Recipe '{spec.recipe}' needs a dataset: pass dataset=PATH (a JSONL, JSON, CSV or Parquet "
                          "file, a directory of shards, a save_to_disk directory, or a hub dataset name).")
    fraction = float(spec.test_split_fraction or 0.0)
    if fraction and spec.test_dataset:
        raise ConfigError(
            f"test_split_fraction={fraction} carves the test set off the train set, but test_dataset={spec.test_dataset} "
            "is also set. Use one of them (pass ~test_dataset to drop the recipe's test set)."
        )
    fmt, columns = dataset_reading(spec)
    train = load_split(store, spec.dataset, kind=kind, split=spec.dataset_split, subset=spec.dataset_subset,
                       fmt=fmt, columns=columns, prefer=("train",))
    if fraction:
        train, test = carve_test(train, fraction, spec.seed)
    elif spec.test_dataset:
        test = load_split(store, spec.test_dataset, kind=kind, split=spec.test_dataset_split,
                          subset=spec.test_dataset_subset, fmt=fmt, columns=columns,
                          prefer=("test", "validation", "valid", "eval", "train"))
    else:
        test = LoadedSplit([])
    return LoadedData(train, test)


__all__ = ["LoadedData", "LoadedSplit", "carve_test", "data_kind", "load_split", "load_training_rows"]
