"""Length-grouped data order: batches of similar-length sequences, still a pure function of (seed, epoch).

Right-padded batches pay for their longest sequence; grouping similar lengths cuts the
padding. As in the "megabatch" scheme of common trainers: shuffle the epoch (seeded),
cut it into windows of ``window_batches`` batches, sort each window by length, cut the
window into batches and shuffle the batch order (seeded). Every step's batch depends only
on the seed, the epoch and the lengths, so exact resume still holds, and each batch is
still a random draw of the data (only its neighbours are chosen by length).
"""

from __future__ import annotations

import random
from typing import Sequence


def length_grouped_order(seed: int, epoch: int, lengths: Sequence[int], batch_size: int, window_batches: int = 64) -> tuple[int, ...]:
    n = len(lengths)
    rng = random.Random(f"{seed}:{epoch}:length-grouped")
    idx = list(range(n))
    rng.shuffle(idx)
    window = max(batch_size, batch_size * window_batches)
    batches: list[list[int]] = []
    for start in range(0, n, window):
        chunk = sorted(idx[start : start + window], key=lambda i: (-lengths[i], i))
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    full = [b for b in batches if len(b) == batch_size]
    partial = [b for b in batches if len(b) < batch_size]
    rng.shuffle(full)  # the step order stays random; only batch membership follows length
    return tuple(i for b in full + partial for i in b)


def item_length(item) -> int:
    """A datum's length, or a preference pair's longer side."""
    if hasattr(item, "length"):
        return int(item.length)
    return max(int(x.length) for x in item)
