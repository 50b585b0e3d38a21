"""Data stages: load rows through the DatasetStore, tokenize them (cached), walk them in batches.

The stages share one :class:`ChatData`. The data order is a
:class:`~kitchen.train.batching.BatchPlan`, a pure function of seed and step, so a
resumed run continues with exactly the batch an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from kitchen.config.spec import train_on_what_of
from kitchen.data.checks import check_rows
from kitchen.engine.context import Context
from kitchen.engine.stage import Stage
from kitchen.errors import DataError
from kitchen.telemetry import events as ev


@dataclass
class ChatData:
    """Rows, their datums, the batch plan and the current batch of a dataset-driven workflow."""

    train_rows: list[dict[str, Any]] = field(default_factory=list)
    test_rows: list[dict[str, Any]] = field(default_factory=list)
    train: list[Any] = field(default_factory=list)  # Datums (SFT) or (chosen, rejected) Datum pairs (DPO)
    test: list[Any] = field(default_factory=list)
    plan: Any = None  # kitchen.train.batching.BatchPlan
    batch: Any = None  # the current kitchen.train.batching.BatchRef
    loaded: Any = None  # the kitchen.data.load.LoadedData preflight read (None: not loaded yet)
    stream: Any = None  # kitchen.data.stream.TrainStream with dataset_streaming=true (train is then empty)

    def summary(self) -> str:
        """The ``dataset:`` line: row counts (or the stream) and the detected format of each split."""
        return self.stream.summary(self.loaded.test) if self.stream is not None else self.loaded.summary()

    def batch_items(self) -> list[Any]:
        items = getattr(self.batch, "items", None)  # a streamed batch carries its Datums
        if items is not None:
            return list(items)
        return [self.train[i] for i in self.batch.indices]


@dataclass(frozen=True)
class LoadDataset(Stage):
    """Read the train (and test) rows and check every row against the workflow's schema.

    This runs in ``validate``, before anything is written, so ``kitchen validate`` and
    ``kitchen run`` reject the same files with the same message (file, row, field).
    """

    kind: str = "chat"  # "chat" (rows with messages) or "preference" (prompt, chosen, rejected)
    streams: bool = False  # the workflow trains from dataset_streaming=true (kitchen.data.stream)

    def validate(self, ctx: Context) -> None:
        spec = ctx.spec
        from kitchen.data.load import load_training_rows  # formats, splits, subsets, columns, test_split_fraction

        data = ctx.use(ChatData)
        if spec.dataset_streaming:
            self._open_stream(ctx, data)
            return
        data.loaded = load_training_rows(spec, ctx.adapters.dataset_store, kind="preference" if self.kind == "preference" else "sft")
        data.train_rows, data.test_rows = data.loaded.train.rows, data.loaded.test.rows
        train_on_what = train_on_what_of(spec)
        for part in (data.loaded.train, data.loaded.test):
            check_rows(part.rows, self.kind, str(part.source), train_on_what)

    def _open_stream(self, ctx: Context, data: ChatData) -> None:
        """The train split as a stream (its first rows checked), the test split loaded as usual."""
        from kitchen.data.load import LoadedData, LoadedSplit
        from kitchen.data.stream import check_streaming_spec, load_test_split, open_train_stream

        spec, kind = ctx.spec, "preference" if self.kind == "preference" else "sft"
        check_streaming_spec(spec, self.streams)
        data.stream = open_train_stream(spec, ctx.adapters.dataset_store, kind)
        test = load_test_split(spec, ctx.adapters.dataset_store, kind)
        check_rows(test.rows, self.kind, str(test.source), train_on_what_of(spec))
        train = LoadedSplit([], data.stream.source, data.stream.format, None, {"streaming": True})
        data.loaded = LoadedData(train, test)
        data.train_rows, data.test_rows = data.stream.first_rows, test.rows

    def execute(self, ctx: Context) -> None:
        data = ctx.use(ChatData)
        if data.loaded is None:
            self.validate(ctx)
        ctx.emit(ev.RUN_INFO, message=data.summary())  # shows the detected format


def tokenize_splits(ctx: Context, cached: Callable[..., Any], noun: str) -> None:
    """Render the train and test rows with ``cached`` (a token_cache function), count and warn.

    An empty training set is a DataError.
    """
    from kitchen.stages.session import Session

    session, spec, data = ctx.use(Session), ctx.spec, ctx.use(ChatData)
    for split in ("train", "test"):
        part = getattr(data.loaded, split)  # a LoadedSplit: rows + what the token cache keys on
        if split == "train" and data.stream is not None:
            continue  # streamed: tokenized batch by batch as training goes (PlanBatches)
        if not part.rows:
            setattr(data, split, [])
            continue
        rows = part.rows
        items, stats, hit = cached(part.source, lambda rows=rows: rows, session.tokenizer, session.renderer,
                                   source_fingerprint=part.fingerprint, extra=part.extra,
                                   num_proc=spec.tokenize_num_proc)
        setattr(data, split, items)
        ctx.record.data_stats[split] = stats
        ctx.emit(ev.RUN_INFO, message=f"{split}: {len(items)} {noun} tokenized" + (" (from cache)" if hit else ""))
        if stats.truncated or stats.dropped_empty:
            ctx.emit(
                ev.RUN_WARNING,
                message=f"{split}: {stats.truncated} of {len(rows)} {noun} were longer than max_length={spec.max_length} "
                f"and were truncated; {stats.dropped_empty} had nothing left to train on and were dropped. "
                "Raise max_length to keep them.",
            )
    if not data.train and data.stream is None:
        raise _nothing_to_train(spec, noun)


def _nothing_to_train(spec: Any, noun: str) -> DataError:
    from kitchen.data.mixture import dataset_label

    return DataError(f"No trainable {noun} in {dataset_label(spec.dataset)}: every row was empty after rendering with max_length={spec.max_length}.")


def sequence_lengths(items: list[Any]) -> list[int]:
    """Each training item's forward-pass length: a Datum's, or the longer of a preference pair's."""
    return [max(i.length for i in item) if isinstance(item, tuple) else item.length for item in items]


def check_tokens_before_run(ctx: Context, cached: Callable[..., Any], noun: str) -> None:
    """In ``validate``: render the train split with the weight-free tokenizer and refuse what the run would.

    Two settings fail only once the data is tokenized: a ``max_length`` that leaves no
    row anything to train on, and a ``max_tokens_per_micro_batch`` below the longest
    sequence. The rendering goes into the token cache, so the run that follows reads it
    back instead of tokenizing twice. Skipped where no tokenizer is at hand without
    loading weights (see :func:`~kitchen.stages.session.offline_tokenizer`).
    """
    from kitchen.stages.session import make_renderer, offline_tokenizer
    from kitchen.train.microbatch import check_longest_fits

    spec, data = ctx.spec, ctx.use(ChatData)
    if data.stream is not None or data.loaded is None or not data.loaded.train.rows:
        return
    tokenizer = offline_tokenizer(spec)
    if tokenizer is None:
        return
    part = data.loaded.train
    items, _, _ = cached(part.source, lambda: part.rows, tokenizer, make_renderer(spec, tokenizer),
                         source_fingerprint=part.fingerprint, extra=part.extra,
                         num_proc=spec.tokenize_num_proc)
    if not items:
        raise _nothing_to_train(spec, noun)
    check_longest_fits(sequence_lengths(items), spec.max_tokens_per_micro_batch, where=f"in {part.source}",
                       name=lambda i: f"number {i + 1} of its trainable {noun}")


class TokenizeChat(Stage):
    """Render chat rows into Datums once; the token cache makes a second run free."""

    def validate(self, ctx: Context) -> None:
        from kitchen.data.token_cache import cached_sft_data

        check_tokens_before_run(ctx, cached_sft_data, "examples")

    def execute(self, ctx: Context) -> None:
        from kitchen.data.token_cache import cached_sft_data

        tokenize_splits(ctx, cached_sft_data, "examples")


class PlanBatches(Stage):
    """Fix the data order for the whole run (a pure function of seed and step)."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.batching import BatchPlan
        from kitchen.train.length_grouping import item_length

        spec, data = ctx.spec, ctx.use(ChatData)
        if data.stream is not None:
            from kitchen.stages.session import Session
            from kitchen.train.stream_batches import StreamPlan

            data.plan = StreamPlan(data.stream.rows_for_epoch, ctx.use(Session).renderer, spec.batch_size, spec.max_steps,
                                   str(data.stream.source))
            ctx.record.data_stats["train"] = data.plan.stats  # counts the rows as they are tokenized
            ctx.progress.total_steps = data.plan.total_steps
            return
        lengths = tuple(item_length(d) for d in data.train) if spec.length_grouped else None
        data.plan = BatchPlan(len(data.train), spec.batch_size, spec.epochs, spec.max_steps, spec.seed, group_lengths=lengths)
        ctx.progress.total_steps = data.plan.total_steps


def epochs(ctx: Context) -> Iterator[int]:
    """The epochs still to run, from the restored step on; binds ``ctx.progress.epoch``."""
    for epoch in ctx.use(ChatData).plan.epochs_from(ctx.step, ctx.progress.data_positions.get(ctx.step)):
        ctx.progress.epoch = epoch
        yield epoch


def batches(ctx: Context) -> Iterator[Any]:
    """This epoch's batches from the current step on; binds ``ChatData.batch``."""
    data = ctx.use(ChatData)
    for batch in data.plan.batches_in_epoch(ctx.progress.epoch, ctx.step):
        data.batch = batch
        position = getattr(batch, "position", None)  # a streamed batch: where the stream stands after it
        if position is not None:
            positions = ctx.progress.data_positions
            positions[batch.step + 1] = position.to_dict()
            for old in [k for k in positions if k < batch.step - 64]:  # steps far behind any checkpoint to come
                del positions[old]
        yield batch


def end_epoch(ctx: Context) -> None:
    """Announce the end of an epoch (training.epoch)."""
    ctx.emit(ev.TRAINING_EPOCH, epoch=ctx.progress.epoch, step=ctx.step)
