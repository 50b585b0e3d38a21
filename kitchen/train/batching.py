"""The data order of a run, as a pure function of (seed, epoch, step).

Because batch ``s`` is always the same examples, a resumed run continues with exactly
the batch an uninterrupted run would have seen next: no batch is skipped or repeated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    rng = random.Random(f"{seed}:{epoch}")
    idx = list(range(n))
    rng.shuffle(idx)
    return tuple(idx)


@dataclass(frozen=True)
class BatchRef:
    step: int  # 0-based global index of the optimizer step this batch feeds
    epoch: int
    index: int  # position within the epoch
    indices: tuple[int, ...]


@dataclass(frozen=True)
class BatchPlan:
    num_examples: int
    batch_size: int
    epochs: int
    max_steps: int | None
    seed: int
    # with lengths, batches group sequences of similar length (length_grouped=true)
    group_lengths: tuple[int, ...] | None = field(default=None, repr=False)
    _orders: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch; a final partial batch is dropped so every step sees batch_size examples."""
        return max(1, self.num_examples // self.batch_size)

    @property
    def total_steps(self) -> int:
        """``max_steps`` when set (it overrides ``epochs``, cycling the data as needed), else whole epochs."""
        return self.max_steps if self.max_steps else self.steps_per_epoch * self.epochs

    def order(self, epoch: int) -> tuple[int, ...]:
        if self.group_lengths is None:
            return _epoch_order(self.seed, epoch, self.num_examples)
        if epoch not in self._orders:
            from kitchen.train.length_grouping import length_grouped_order

            self._orders.clear()
            self._orders[epoch] = length_grouped_order(self.seed, epoch, self.group_lengths, self.batch_size)
        return self._orders[epoch]

    def batch(self, step: int) -> BatchRef:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        start = index * self.batch_size
        chunk = order[start : start + self.batch_size]
        if len(chunk) < self.batch_size:  # fewer examples than one batch: wrap around
            chunk = [order[i % len(order)] for i in range(start, start + self.batch_size)]
        return BatchRef(step, epoch, index, tuple(chunk))

    def epochs_from(self, step: int, position: object = None) -> range:
        """The epochs from ``step`` on (``position`` is for a streamed plan; this order needs only the step)."""
        last = (self.total_steps - 1) // self.steps_per_epoch if self.total_steps else -1
        return range(step // self.steps_per_epoch, last + 1)

    def batches_in_epoch(self, epoch: int, from_step: int):
        first = max(from_step, epoch * self.steps_per_epoch)
        last = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
        for step in range(first, last):
            yield self.batch(step)
