"""Rows that stay on disk: what :class:`HFDatasetStore` returns for large sources.

A run reads every row a few times (format check, row check, tokenization) but never
needs them all in memory at once, and a million chat rows held as Python dicts take
tens of GB. So the store hands out read-only sequences that read rows on access:

* :class:`JsonlRows`: a JSON Lines file, indexed once by the byte offsets of its
  non-blank lines (16 bytes a row); a row is parsed from the file when it is read, with
  ``os.pread`` so forked tokenizer processes can share it;
* :class:`ArrowRows`: a ``datasets.Dataset`` (Parquet, CSV, ``save_to_disk``, hub data),
  which is already memory-mapped Arrow; rows become dicts only when read;
* :class:`ChainRows`: several of those (a directory of shards), end to end.

All of them are ``Sequence``s: ``len``, ``rows[i]``, ``rows[a:b]`` (a list, read in one
go), iteration in blocks, and ``==`` against a list of dicts.
"""

from __future__ import annotations

import bisect
import json
import os
from array import array
from collections.abc import Sequence
from typing import Any, Iterator

BLOCK = 1024  # rows read per block when iterating


class LazyRows(Sequence):
    """Shared behaviour: slices read a block at once, iteration goes block by block."""

    def _read(self, start: int, stop: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def __getitem__(self, k):
        n = len(self)
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._read(start, stop) if start < stop else []
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(k)
        return self._read(k, k + 1)[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self), BLOCK):
            yield from self._read(start, min(start + BLOCK, len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, Sequence)) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self)} rows>"


class JsonlRows(LazyRows):
    """The rows of a JSON Lines file, read from disk on access.

    ``starts``/``ends`` are the byte range of each non-blank line (the caller has already
    parsed every line once to report a malformed one by its line number).
    """

    def __init__(self, path: str, starts: array, ends: array) -> None:
        self.path, self.starts, self.ends = path, starts, ends
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.starts)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "starts": self.starts, "ends": self.ends}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["starts"], state["ends"])

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked process opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _read(self, start: int, stop: int) -> list[dict[str, Any]]:
        base = self.starts[start]
        blob = os.pread(self._file(), self.ends[stop - 1] - base, base)
        loads = json.loads
        return [loads(blob[a - base:b - base]) for a, b in zip(self.starts[start:stop], self.ends[start:stop])]


class ArrowRows(LazyRows):
    """The rows of a ``datasets.Dataset``, as dicts, read on access."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, start: int, stop: int) -> list[dict[str, Any]]:
        cols = self.dataset[start:stop]
        names = list(cols)
        return [dict(zip(names, values)) for values in zip(*(cols[n] for n in names))] if names else [{} for _ in range(stop - start)]


class ChainRows(LazyRows):
    """Several row sequences end to end (the shards of a directory, in name order)."""

    def __init__(self, parts: list[Sequence]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.bounds = [0]
        for p in self.parts:
            self.bounds.append(self.bounds[-1] + len(p))

    def __len__(self) -> int:
        return self.bounds[-1]

    def _read(self, start: int, stop: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        k = bisect.bisect_right(self.bounds, start) - 1
        while start < stop:
            lo, hi = self.bounds[k], self.bounds[k + 1]
            take = min(stop, hi)
            out += list(self.parts[k][start - lo:take - lo])
            start, k = take, k + 1
        return out


__all__ = ["ArrowRows", "ChainRows", "JsonlRows", "LazyRows"]
