"""``dataset_streaming=true``: train from a dataset that is never materialised.

What changes against the default path (:mod:`kitchen.data.load` + the token cache):

* the train set is a ``datasets.IterableDataset`` from the DatasetStore's ``stream``;
  rows are normalised to the detected format and tokenized one batch at a time as
  training goes (:class:`~kitchen.train.stream_batches.StreamPlan`); nothing is cached;
* the data order is a seeded shard + buffer shuffle per epoch
  (``shuffle(seed=seed, buffer_size=dataset_shuffle_buffer)`` and ``set_epoch(epoch)``),
  so it is a pure function of (seed, epoch) and exact resume holds;
* with no row count up front there is no epoch length, so ``max_steps`` is required
  (the stream is read again, reshuffled, when a pass ends); the row count is never
  inferred, even where a source's metadata states it (the ``dataset:`` line shows it);
* ``validate`` (and ``kitchen data inspect``) read only the first rows: the format is
  detected from the first one and the first :data:`CHECKED_ROWS` are checked; a bad row
  further on stops the run when it is reached, naming the field;
* the test set (``test_dataset``) is small by nature and is loaded as usual.

Keys that need the whole dataset (``test_split_fraction``, ``length_grouped``, ``epochs``
without ``max_steps``) and workflows that cannot stream are exit-2 errors naming the
key, in ``kitchen validate`` too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from kitchen.config.spec import dataset_reading, train_on_what_of
from kitchen.errors import ConfigError, DataError
from kitchen.train.formats import FormatChoice, choose_format, normalize_rows

CHECKED_ROWS = 64  # rows read and checked before training (validate, data inspect, the preview rows)


def check_streaming_spec(spec: Any, workflow_streams: bool) -> None:
    """Refuse, naming the key, what cannot work without the whole dataset in hand."""
    if not workflow_streams:
        raise ConfigError(
            f"dataset_streaming=true is not supported by the {spec.workflow.name} workflow (recipe '{spec.recipe}'): "
            "only the supervised workflow streams its train set. Preference (DPO) caches reference log-probs per "
            "example and distillation samples prompts from the whole set. Set dataset_streaming=false."
        )
    if not spec.max_steps:
        raise ConfigError(
            f"dataset_streaming=true needs max_steps=N: a stream has no known length, so epochs={spec.epochs} "
            "cannot be turned into a number of steps. Set max_steps (the stream is read again, reshuffled, when a pass ends)."
        )
    if spec.test_split_fraction:
        raise ConfigError(
            f"test_split_fraction={spec.test_split_fraction} carves a test set off the whole train set, which "
            "dataset_streaming=true never holds. Give a test_dataset= instead, or set dataset_streaming=false."
        )
    if spec.length_grouped:
        raise ConfigError(
            "length_grouped=true sorts the whole train set by length, which dataset_streaming=true never holds. "
            "Set length_grouped=false (or dataset_streaming=false)."
        )


@dataclass
class TrainStream:
    """The streamed train split: the IterableDataset, its format, and the first rows (checked)."""

    dataset: Any  # datasets.IterableDataset, unshuffled
    source: str
    format: FormatChoice
    kind: str
    seed: int
    buffer_size: int
    first_rows: list[dict[str, Any]] = field(default_factory=list)  # normalised; previews and `data inspect` use them
    num_rows: int | None = None  # when the source's metadata states it (shown, never relied on)

    def rows_for_epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        """Epoch ``epoch``'s rows, normalised, in an order fixed by (seed, epoch)."""
        shuffled = self.dataset.shuffle(seed=self.seed, buffer_size=self.buffer_size)
        shuffled.set_epoch(epoch)  # datasets reshuffles with seed + epoch
        for i, row in enumerate(_translated(iter(shuffled), self.source)):
            yield _normalised(row, self.format, self.source, self.kind, f"row {i} of epoch {epoch} (in shuffled order)")

    def summary(self, test: Any = None) -> str:
        """The ``dataset:`` line of a streamed run."""
        count = f"{self.num_rows} rows per its metadata" if self.num_rows else "row count unknown"
        text = (f"dataset: train streamed from {self.source} ({count}; shuffle buffer {self.buffer_size}, seed {self.seed}), "
                f"format {self.format.label()}")
        if test is not None and test.rows:
            same = test.format == self.format
            text += f"; {len(test.rows)} test rows" + ("" if same else f", format {test.label()}")
        else:
            text += "; no test rows"
        return text


def _normalised(row: Any, choice: FormatChoice, source: str, kind: str, position: str) -> dict[str, Any]:
    """One row normalised to ``choice``; a bad one is a DataError naming its line in its file when
    the store tagged it (local JSON), else ``position`` in the stream."""
    from kitchen.adapters.hf_datasets.streaming import row_origin
    from kitchen.data.load import _jsonl_line_namer

    origin = row_origin(row)

    def where(_: int) -> str:
        if origin is None:
            return position
        path, index = origin
        return _jsonl_line_namer(path)(index) + ("" if Path(path) == Path(source).expanduser().resolve() else f" of {Path(path).name}")

    return normalize_rows([row], choice, source, kind, where=where)[0]


def _translated(rows: Iterator[Any], source: str) -> Iterator[Any]:
    """``rows``, with a read error mid-stream (a malformed line in shard 7) as one DataError naming the source."""
    count = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - the builder's parse errors, wrapped by datasets
            cause = exc.__cause__ or exc.__context__ or exc
            text = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else type(cause).__name__
            raise DataError(f"{source}: could not read the stream after {count} rows ({type(cause).__name__}: {text}). "
                            "Fix or remove the malformed file or line.") from None
        count += 1
        yield row


def _open_one(spec: Any, store: Any, kind: str, source: str, split: str | None, subset: str | None, fmt: str,
              columns: dict[str, str]) -> TrainStream:
    """One source opened as a stream, its format detected from its first row and its first rows checked."""
    from kitchen.adapters.hf_datasets.streaming import ROW_ORIGIN, known_num_rows, row_origin
    from kitchen.data.checks import check_rows

    dataset = store.stream(source, split=split, subset=subset, prefer=("train",))
    first = list(itertools.islice(_translated(iter(dataset), source), CHECKED_ROWS))
    if not first:
        raise DataError(f"The dataset {source} is empty: it has no rows. Add at least one example.")
    origins = [row_origin(row) for row in first]  # the format is detected from the row as written
    choice = choose_format(source, first[0], fmt, kind, columns)
    rows = [_normalised({**row, ROW_ORIGIN: origin} if origin else row, choice, source, kind, f"row {i}")
            for i, (row, origin) in enumerate(zip(first, origins))]
    check_rows(rows, "preference" if kind == "preference" else "chat", source, train_on_what_of(spec))
    return TrainStream(dataset, source, choice, kind, spec.seed, spec.dataset_shuffle_buffer, rows,
                       known_num_rows(dataset))


def open_train_stream(spec: Any, store: Any, kind: str = "sft") -> Any:
    """Open the train split as a stream, detect its format from the first row and check the first rows
    (a :class:`MixedStream` for a dataset list)."""
    if not spec.dataset:
        raise ConfigError(f"Recipe '{spec.recipe}' needs a dataset: pass dataset=PATH or a hub dataset name.")
    if not callable(getattr(store, "stream", None)):
        raise ConfigError(f"dataset_streaming=true: the dataset store of adapters={spec.adapters.name} "
                          f"({type(store).__name__}) cannot stream (it has no stream() method). Set dataset_streaming=false.")
    fmt, columns = dataset_reading(spec)
    if isinstance(spec.dataset, list):
        return _open_mixture(spec, store, kind, fmt, columns)
    return _open_one(spec, store, kind, spec.dataset, spec.dataset_split, spec.dataset_subset, fmt, columns)


@dataclass
class MixedStream:
    """A streamed dataset list: each source its own :class:`TrainStream` (format, shuffle), rows
    drawn from them by weight with :func:`kitchen.data.mixture.interleave_streams`, seeded by
    (seed, epoch), so the StreamPlan's row-count resume holds as for one stream."""

    parts: list[TrainStream]
    probabilities: list[float]
    strategy: str
    seed: int
    source: str
    first_rows: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)  # the dataset list's entries (weights, for inspect)
    num_rows: int | None = None

    @property
    def format(self) -> FormatChoice:
        return self.parts[0].format

    def rows_for_epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        from kitchen.data.mixture import interleave_streams

        return interleave_streams([p.rows_for_epoch for p in self.parts], self.probabilities, self.strategy,
                                  self.seed, epoch)

    def shares(self) -> str:
        return ", ".join(f"{p.source} {q:.0%} ({p.format.label()})" for p, q in zip(self.parts, self.probabilities))

    def summary(self, test: Any = None) -> str:
        text = (f"dataset: train streamed from a mixture ({self.strategy}, seed {self.seed}) of {self.shares()}; "
                f"shuffle buffer {self.parts[0].buffer_size} per source")
        if test is not None and test.rows:
            text += f"; {len(test.rows)} test rows, format {test.label()}"
        else:
            text += "; no test rows"
        return text


def _open_mixture(spec: Any, store: Any, kind: str, fmt: str, columns: dict[str, str]) -> MixedStream:
    from kitchen.data.load import mixed_kinds_error
    from kitchen.data.mixture import probabilities, source_label, strategy_of

    strategy = strategy_of(spec.dataset, spec.dataset_mix, streaming=True)
    parts: list[TrainStream | None] = []
    failures: dict[int, DataError] = {}
    for i, src in enumerate(spec.dataset):
        args = (src["path"], src["split"] or spec.dataset_split, src["subset"] or spec.dataset_subset)
        try:
            parts.append(_open_one(spec, store, kind, *args, src["format"] or fmt, src["columns"] or columns))
        except DataError as exc:
            parts.append(None)
            failures[i] = exc
    for i, exc in failures.items():
        src = spec.dataset[i]
        try:
            theirs = _open_one(spec, store, "sft" if kind == "preference" else "preference", src["path"],
                               src["split"] or spec.dataset_split, src["subset"] or spec.dataset_subset, "auto",
                               src["columns"] or columns)
        except (DataError, ConfigError):
            raise exc from None
        ours = next(((k, p.source, p.format.label()) for k, p in enumerate(parts) if p is not None), None)
        raise mixed_kinds_error(spec, kind, i, theirs.format.label(), ours)
    ok = [p for p in parts if p is not None]
    first = [row for p in ok for row in p.first_rows]
    return MixedStream(ok, probabilities(spec.dataset), strategy, spec.seed, source_label(spec.dataset), first,
                       list(spec.dataset))


def load_test_split(spec: Any, store: Any, kind: str = "sft") -> Any:
    """The test split of a streamed run, loaded in full as on the default path (or an empty split)."""
    from kitchen.data.load import LoadedSplit, load_split

    if not spec.test_dataset:
        return LoadedSplit([])
    fmt, columns = dataset_reading(spec)
    return load_split(store, spec.test_dataset, kind=kind, split=spec.test_dataset_split, subset=spec.test_dataset_subset,
                      fmt=fmt, columns=columns, prefer=("test", "validation", "valid", "eval", "train"))


__all__ = ["CHECKED_ROWS", "MixedStream", "TrainStream", "check_streaming_spec", "load_test_split", "open_train_stream"]
