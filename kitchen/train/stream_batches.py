"""Batches assembled from a stream of rows as training goes (``dataset_streaming=true``).

The streamed counterpart of :class:`~kitchen.train.batching.BatchPlan`, with the same
three methods the data stages call (``total_steps``, ``epochs_from``,
``batches_in_epoch``). With no length known up front, an epoch is one pass over the
stream, and the order is whatever ``rows_for_epoch(epoch)`` yields: the caller makes
that a pure function of (seed, epoch) (a seeded shard + buffer shuffle), so batch ``s``
is always the same rows.

A resume needs to know where in the stream step ``s`` ended, because rows that render
to nothing are dropped and a batch can consume more than ``batch_size`` rows. Every
batch carries that :class:`StreamPosition` (epoch, rows read); the checkpoint records
it, and a resumed plan reads the epoch again and skips that many rows without
tokenizing them. A checkpoint without one (written before streaming was turned on) is
replayed from the start instead, tokenizing, which is slower but gives the same batches.

No I/O here: rows come in through ``rows_for_epoch`` and leave as Datums.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from kitchen.errors import DataError
from kitchen.ports.types import Datum
from kitchen.train.datum import DataStats, render_sft_examples, rendered_to_datum


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream stands after a batch: ``rows`` rows of epoch ``epoch`` read, ``batches`` batches made of them."""

    epoch: int
    rows: int
    batches: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "StreamPosition | None":
        if not data:
            return None
        return cls(int(data["epoch"]), int(data["rows"]), int(data.get("batches", 0)))


@dataclass(frozen=True)
class StreamBatch:
    step: int  # 0-based global index of the optimizer step this batch feeds
    epoch: int
    index: int  # position within the epoch
    items: tuple[Datum, ...]
    position: StreamPosition  # the stream after this batch (what a checkpoint at this step records)


class StreamPlan:
    """Walk ``rows_for_epoch(0), rows_for_epoch(1), ...`` in batches of ``batch_size`` Datums until ``max_steps``."""

    def __init__(self, rows_for_epoch: Callable[[int], Iterable[Mapping[str, Any]]], renderer: Any, batch_size: int,
                 max_steps: int, source: str = "dataset") -> None:
        self.rows_for_epoch = rows_for_epoch
        self.renderer = renderer
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.source = source
        self.stats = DataStats()  # of the rows tokenized by this process (a resume counts from where it starts)
        self._start = StreamPosition(0, 0, 0)
        self._next_step = 0  # the step the next batch made will feed
        self._discard = 0  # batches to make and drop (replaying a checkpoint that recorded no position)

    @property
    def total_steps(self) -> int:
        return self.max_steps

    def epochs_from(self, step: int, position: Mapping[str, Any] | StreamPosition | None = None) -> Iterator[int]:
        """The epochs from the resume point on, while steps remain (their count is not known in advance)."""
        start = position if isinstance(position, StreamPosition) else StreamPosition.from_dict(position)
        if start is None:
            start, self._discard = StreamPosition(0, 0, 0), step
            self._next_step = 0
        else:
            self._next_step = step
        self._start = start
        epoch = start.epoch
        while self._next_step < self.max_steps:
            yield epoch
            epoch += 1

    def batches_in_epoch(self, epoch: int, from_step: int) -> Iterator[StreamBatch]:
        """Batches of one pass over the stream; a final partial batch is dropped, as in BatchPlan."""
        resumed = self._start if epoch == self._start.epoch else StreamPosition(epoch, 0, 0)
        rows = iter(self.rows_for_epoch(epoch))
        read = resumed.rows
        if read:
            next(itertools.islice(rows, read, read), None)  # skip what the checkpointed steps consumed
        index, made = resumed.batches, 0
        while self._next_step < self.max_steps:
            items: list[Datum] = []
            while len(items) < self.batch_size:
                chunk = list(itertools.islice(rows, self.batch_size - len(items)))
                if not chunk:
                    break
                items += self._render(chunk, epoch, read)
                read += len(chunk)
            if len(items) < self.batch_size:
                break  # the pass is over
            made += 1
            batch = StreamBatch(self._next_step, epoch, index, tuple(items), StreamPosition(epoch, read, index + 1))
            self._next_step += 1
            index += 1
            if self._discard:
                self._discard -= 1
                continue
            yield batch
        if not made and resumed.rows == 0:
            raise DataError(
                f"{self.source}: one pass over the stream gave fewer than batch_size={self.batch_size} trainable examples "
                f"({self.stats.kept} kept of {self.stats.examples} rows read in epoch {epoch}). Lower batch_size, raise "
                "max_length, or add rows."
            )

    def _render(self, rows: list[Mapping[str, Any]], epoch: int, first: int) -> list[Datum]:
        out = []
        where = f"{self.source} (streamed, epoch {epoch}, rows counted in shuffled order)"
        for example in render_sft_examples(rows, self.renderer, where, start=first):
            self.stats.examples += 1
            self.stats.truncated += example.truncated
            if example.empty or len(example.tokens) < 2:
                self.stats.dropped_empty += 1
                continue
            datum = rendered_to_datum(example)
            self.stats._add(datum)
            out.append(datum)
        return out


__all__ = ["StreamBatch", "StreamPlan", "StreamPosition"]
