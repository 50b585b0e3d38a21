"""How one ``forward_backward`` batch is cut into micro-batches, rank shares and packed rows.

Tinker's ``forward_backward`` *sums* the loss over the datums it is given, so the
gradient of a batch is the sum of the gradients of any partition of it. That is what
lets the local backend run a batch as several smaller forward/backward passes (to bound
activation memory) or across ranks (data parallel) and still take the same optimizer
step, up to float rounding. This module decides the partition; it is pure (no torch, no
I/O), so the plans are a function of the datum lengths and the options only.

* :func:`rank_share` gives each rank a contiguous slice of the global batch.
* :func:`plan_micro_batches` splits a list of lengths by a datum count and/or a token
  budget, keeping the original order (so logprobs come back in place).
* :func:`pack_rows` puts several sequences into one row for the padding-free path
  (first-fit-decreasing into rows of a token capacity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from kitchen.errors import ConfigError


@dataclass(frozen=True)
class MicroBatchOptions:
    """``micro_batch_size`` datums and/or ``max_tokens`` padded tokens per pass; 0 = no limit."""

    micro_batch_size: int = 0
    max_tokens: int = 0
    padding_free: bool = False

    @property
    def splits(self) -> bool:
        return self.micro_batch_size > 0 or self.max_tokens > 0


def check_options(opts: MicroBatchOptions, batch_size: int | None = None) -> None:
    """Reject settings that can never work, before any model is loaded."""
    if opts.micro_batch_size < 0:
        raise ConfigError(f"micro_batch_size must be >= 0 (0 = the whole batch in one pass), got {opts.micro_batch_size}.")
    if opts.max_tokens < 0:
        raise ConfigError(
            f"max_tokens_per_micro_batch must be >= 0 (0 = no token budget), got {opts.max_tokens}."
        )
    if batch_size is not None and opts.micro_batch_size > batch_size:
        raise ConfigError(
            f"micro_batch_size={opts.micro_batch_size} is larger than batch_size={batch_size}: a micro-batch is a "
            f"part of one optimizer step's batch. Use micro_batch_size between 1 and {batch_size} "
            "(or 0 to run the whole batch in one pass)."
        )


def rank_share(n: int, rank: int, world: int) -> range:
    """The contiguous slice of an ``n``-datum batch that ``rank`` of ``world`` computes.

    The caller checks that ``world`` divides the configured batch size; for a batch that
    is not divisible (a last, short evaluation batch) the first ranks take one more.
    """
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def row_cost(lengths: Sequence[int], padding_free: bool) -> int:
    """Tokens one forward pass processes for these sequences: padded rows, or packed (sum)."""
    if not lengths:
        return 0
    return sum(lengths) if padding_free else max(lengths) * len(lengths)


def check_longest_fits(lengths: Sequence[int], max_tokens: int, where: str = "in the batch",
                       name: Callable[[int], str] = lambda i: f"datum {i}") -> None:
    """A token budget must hold the longest sequence: one sequence is never split across passes.

    ``validate`` calls this over the whole training set (``where``/``name`` then point at a
    file and row), a training step over its batch; both say the same thing.
    """
    if not isinstance(max_tokens, int) or not max_tokens or not lengths:  # auto: the session picks one >= max_length
        return
    longest = max(lengths)
    if longest > max_tokens:
        raise ConfigError(
            f"max_tokens_per_micro_batch={max_tokens} is smaller than the longest sequence {where} "
            f"({longest} tokens, {name(list(lengths).index(longest))}): one sequence is never split across passes. Set "
            f"max_tokens_per_micro_batch to at least {longest} (or max_length, to cover every batch), or 0 for no budget."
        )


def plan_micro_batches(lengths: Sequence[int], opts: MicroBatchOptions) -> list[list[int]]:
    """Consecutive groups of datum indices, each within ``opts``' datum count and token budget.

    The token budget counts what the pass really computes: ``rows x longest`` with right
    padding, the sum of lengths with ``padding_free``. A sequence longer than the budget
    on its own is an error naming its length (it could never be computed within it).
    """
    n = len(lengths)
    if n == 0:
        return []
    if not opts.splits:
        return [list(range(n))]
    check_longest_fits(lengths, opts.max_tokens)
    groups: list[list[int]] = []
    current: list[int] = []
    for i, length in enumerate(lengths):
        candidate = [lengths[j] for j in current] + [length]
        too_many = opts.micro_batch_size and len(candidate) > opts.micro_batch_size
        too_big = opts.max_tokens and row_cost(candidate, opts.padding_free) > opts.max_tokens
        if current and (too_many or too_big):
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    return groups


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing packing of sequences into rows of at most ``capacity`` tokens.

    Returns the datum indices of each row; within a row, indices keep ascending order.
    A sequence longer than ``capacity`` gets a row of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return [sorted(r) for r in rows]


def divisible_sizes(batch_size: int, limit: int = 8) -> list[int]:
    """World sizes (process counts) that divide ``batch_size`` evenly, for error messages."""
    return [w for w in range(1, min(batch_size, 64) + 1) if batch_size % w == 0][:limit]
