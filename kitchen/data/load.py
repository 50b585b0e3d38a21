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
        mixture = self.extra.get("mixture")
        if mixture:  # a dataset list: each source's own format
            return f"mixture ({self.extra['strategy']}) of " + " + ".join(m["format"] for m in mixture)
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
    if isinstance(spec.dataset, list):
        train, carved = load_mixture(spec, store, kind, fraction)
    else:
        train = load_split(store, spec.dataset, kind=kind, split=spec.dataset_split, subset=spec.dataset_subset,
                           fmt=fmt, columns=columns, prefer=("train",))
        carved = None
    if carved is not None:
        test = carved
    elif fraction:
        train, test = carve_test(train, fraction, spec.seed)
    elif spec.test_dataset:
        test = load_split(store, spec.test_dataset, kind=kind, split=spec.test_dataset_split,
                          subset=spec.test_dataset_subset, fmt=fmt, columns=columns,
                          prefer=("test", "validation", "valid", "eval", "train"))
    else:
        test = LoadedSplit([])
    return LoadedData(train, test)


KIND_NOUN = {"sft": "chat (supervised) rows", "preference": "preference rows (prompt, chosen, rejected)"}


def mixed_kinds_error(spec: Any, kind: str, i: int, their_format: str, ours: tuple[int, str, str] | None) -> DataError:
    """dataset[i] holds rows of the other kind than the run's (``ours``: a source of the run's kind, if any)."""
    other = "sft" if kind == "preference" else "preference"
    against = (f"dataset[{ours[0]}] ({ours[1]}) holds {KIND_NOUN[kind]}, format {ours[2]}"
               if ours else f"the {spec.workflow.name} workflow reads {KIND_NOUN[kind]}")
    return DataError(
        f"The dataset list mixes incompatible rows: dataset[{i}] ({spec.dataset[i]['path']}) holds {KIND_NOUN[other]}, "
        f"format {their_format}, while {against}. One mixture trains one workflow, so every source must hold "
        f"{KIND_NOUN[kind]}: remove dataset[{i}]"
        + (" (preference rows train with recipe=dpo_basic)." if other == "preference" else
           " (a preference mixture needs chosen/rejected pairs in every source).")
    )


def load_sources(spec: Any, store: Any, kind: str) -> list[LoadedSplit]:
    """Every source of a dataset list, each with its own split, subset, format detection and columns.

    A source whose rows are of the other kind (preference rows in a supervised mixture, or
    the reverse) is one DataError naming it and a source of the run's kind, with both formats.
    """
    fmt, columns = dataset_reading(spec)
    parts: list[LoadedSplit | None] = []
    failures: dict[int, DataError] = {}
    for i, src in enumerate(spec.dataset):
        try:
            parts.append(load_split(store, src["path"], kind=kind, split=src["split"] or spec.dataset_split,
                                    subset=src["subset"] or spec.dataset_subset, fmt=src["format"] or fmt,
                                    columns=src["columns"] or columns, prefer=("train",)))
        except DataError as exc:
            parts.append(None)
            failures[i] = exc
    for i, exc in failures.items():
        other = "sft" if kind == "preference" else "preference"
        src = spec.dataset[i]
        try:
            theirs = load_split(store, src["path"], kind=other, split=src["split"] or spec.dataset_split,
                                subset=src["subset"] or spec.dataset_subset, fmt="auto",
                                columns=src["columns"] or columns, prefer=("train",))
        except (DataError, ConfigError):
            raise exc from None  # not the other kind either: the source's own message
        ours = next(((k, p.source, p.label()) for k, p in enumerate(parts) if p is not None), None)
        raise mixed_kinds_error(spec, kind, i, theirs.label(), ours)
    return [p for p in parts if p is not None]


def _combined_fingerprint(parts: Sequence[LoadedSplit], info: dict[str, Any]) -> str | None:
    import hashlib
    import json

    if any(p.fingerprint is None for p in parts):
        return None
    body = json.dumps({"parts": [[p.fingerprint, p.extra] for p in parts], **info}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def load_mixture(spec: Any, store: Any, kind: str, fraction: float = 0.0) -> tuple[LoadedSplit, LoadedSplit | None]:
    """The train rows of a dataset list, mixed as :mod:`kitchen.data.mixture` decides; and, with
    ``test_split_fraction``, the test rows carved off each source by the same fraction (so the
    test set holds each source in proportion to its size, and no test row is ever trained on)."""
    from kitchen.data.mixture import MixedRows, mixture_order, probabilities, source_label, strategy_of

    sources = spec.dataset
    strategy = strategy_of(sources, spec.dataset_mix, bool(getattr(spec, "dataset_streaming", False)))
    parts = load_sources(spec, store, kind)
    tests = None
    if fraction:
        carved = [carve_test(p, fraction, spec.seed) for p in parts]
        parts, tests = [c[0] for c in carved], [c[1] for c in carved]
    probs = probabilities(sources)
    src, row = mixture_order([len(p.rows) for p in parts], probs, strategy, spec.seed)
    rows = MixedRows([p.rows for p in parts], src, row)
    counts = rows.counts()
    mixture = [{"path": p.source, "weight": s["weight"], "probability": round(q, 6), "rows": len(p.rows),
                "drawn": c, "format": p.label()} for p, s, q, c in zip(parts, sources, probs, counts)]
    info = {"strategy": strategy, "seed": spec.seed, "mixture": mixture}
    if fraction:
        info.update(test_split_fraction=fraction)
    label = source_label(sources)
    train = LoadedSplit(rows, label, parts[0].format, _combined_fingerprint(parts, info), info)
    if tests is None:
        return train, None
    t_src, t_row = mixture_order([len(t.rows) for t in tests], probs, "concat", spec.seed)
    t_info = {**info, "part": "test", "carved_from_train": True, "mixture": [
        {**m, "rows": len(t.rows), "drawn": len(t.rows)} for m, t in zip(mixture, tests)]}
    test = LoadedSplit(MixedRows([t.rows for t in tests], t_src, t_row), label, parts[0].format,
                       _combined_fingerprint(tests, t_info), t_info)
    return train, test


__all__ = ["LoadedData", "LoadedSplit", "carve_test", "data_kind", "load_mixture", "load_sources", "mixed_kinds_error", "load_split",
           "load_training_rows"]
