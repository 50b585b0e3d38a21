"""Weighted dataset mixtures: ``dataset: [{path: a.jsonl, weight: 0.7}, {path: b.jsonl, weight: 0.3}]``.

Three pieces, all pure (no I/O):

* :func:`parse_sources` checks the list form of ``dataset`` key by key, so a bad weight is
  one sentence naming ``dataset[1].weight`` (in ``kitchen validate`` too);
* :func:`strategy_of` turns ``dataset_mix`` and the weights into one of ``concat``,
  ``interleave_under``, ``interleave_over`` (LLaMA-Factory's ``mix_strategy`` meanings);
* :func:`mixture_order` (materialised sources) and :func:`interleave_streams` (streamed
  sources) decide which source each row of the mixture comes from.

Why kitchen draws the interleaving itself instead of calling
``datasets.interleave_datasets``: kitchen's rows are not one Arrow dataset per source but
per-source views normalised to their own detected format (a JSONL of ``messages`` next
to a Parquet file of alpaca rows), and the streamed path resumes by counting rows read
in an epoch. ``interleave_datasets`` needs sources with aligned features and gives no
row-level position to resume from; a few lines of seeded sampling over row indices work
for both paths and make the order a pure function of (seed, sizes, weights[, epoch]).
The stopping rules are those of ``interleave_datasets``: ``first_exhausted`` for
``interleave_under`` and ``all_exhausted`` for ``interleave_over``.
"""

from __future__ import annotations

import math
import random
from array import array
from typing import Any, Callable, Iterator, Sequence

STRATEGIES = ("concat", "interleave_under", "interleave_over")
SOURCE_KEYS = {
    "path": "the file, directory or hub dataset (required)",
    "weight": "its share of the mixture, a number > 0 (weights are normalised to sum to 1)",
    "split": "its split (as dataset_split)",
    "subset": "its hub config (as dataset_subset)",
    "format": "its row format (as dataset_format; default: detected from its first row)",
    "columns": "its column mapping (as dataset_columns, e.g. {messages: dialog})",
}
DEFAULT_WEIGHTED = "interleave_over"  # weights given, dataset_mix unset: every row is seen, proportions hold


class MixtureKeyError(ValueError):
    """A bad entry of the list form of ``dataset``: ``key`` names it (``dataset[1].weight``)."""

    def __init__(self, key: str, text: str) -> None:
        super().__init__(text)
        self.key = key


def _allowed() -> str:
    return "; ".join(f"{k}: {v}" for k, v in SOURCE_KEYS.items())


def parse_sources(value: Any) -> list[dict[str, Any]]:
    """The list form of ``dataset``, each entry checked and completed with every key (unset: None)."""
    from kitchen.errors import did_you_mean

    if not value:
        raise MixtureKeyError("dataset", "dataset = [] is an empty list of sources: give at least one "
                              "{path: FILE, weight: W}, or dataset=FILE for a single source.")
    out = []
    for i, entry in enumerate(value):
        key = f"dataset[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise MixtureKeyError(key, f"{key} = {entry!r} is not a source: each entry of a dataset list is a mapping "
                                  f"such as {{path: a.jsonl, weight: 0.7}}. Allowed keys: {_allowed()}.")
        for name in entry:
            if name not in SOURCE_KEYS:
                raise MixtureKeyError(f"{key}.{name}", f"{key}.{name} is not a source key." + did_you_mean(str(name), list(SOURCE_KEYS))
                                      + f" Allowed keys: {_allowed()}.")
        path = entry.get("path")
        if not isinstance(path, str) or not path.strip():
            raise MixtureKeyError(f"{key}.path", f"{key}.path is {'missing' if path is None else repr(path)}: every source "
                                  "needs path: FILE (a JSONL/JSON/CSV/Parquet file, a directory, or a hub dataset name).")
        weight = entry.get("weight")
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise MixtureKeyError(f"{key}.weight", f"{key}.weight = {weight!r} is not a number: a weight is a number "
                                      "> 0 (its share of the mixture; weights are normalised to sum to 1).")
            if not math.isfinite(weight) or weight <= 0:
                raise MixtureKeyError(f"{key}.weight", f"{key}.weight = {weight!r} is not allowed: a weight is a finite "
                                      "number > 0 (leave a source out instead of giving it weight 0).")
            weight = float(weight)
        columns = entry.get("columns") or {}
        if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
            raise MixtureKeyError(f"{key}.columns", f"{key}.columns = {columns!r}: give a mapping of canonical field to "
                                  "your column, e.g. columns: {messages: dialog}.")
        for name in ("split", "subset", "format"):
            if entry.get(name) is not None and not isinstance(entry.get(name), str):
                raise MixtureKeyError(f"{key}.{name}", f"{key}.{name} = {entry.get(name)!r}: must be a string.")
        out.append({"path": path, "weight": weight, "split": entry.get("split"), "subset": entry.get("subset"),
                    "format": entry.get("format"), "columns": {k: v for k, v in columns.items() if v}})
    weighted = [s["weight"] is not None for s in out]
    if any(weighted) and not all(weighted):
        i = weighted.index(False)
        raise MixtureKeyError(f"dataset[{i}].weight", f"dataset[{i}].weight is missing while other sources have one: "
                              "give every source a weight, or none (then dataset_mix decides).")
    return out


def strategy_of(sources: Sequence[dict[str, Any]], mix: str | None, streaming: bool = False) -> str:
    """The mixing strategy: ``dataset_mix`` when set, else concat without weights and
    :data:`DEFAULT_WEIGHTED` with them. Raises :class:`MixtureKeyError` for what cannot work."""
    weighted = bool(sources) and sources[0].get("weight") is not None
    if mix is None:
        mix = DEFAULT_WEIGHTED if weighted else "concat"
        if streaming and mix == "concat":
            raise MixtureKeyError("dataset_mix", "a streamed mixture needs weights or dataset_mix=interleave_under|"
                                  "interleave_over: dataset_mix=concat (the default without weights) shuffles the whole "
                                  "concatenation, which dataset_streaming=true never holds.")
    if mix not in STRATEGIES:
        raise MixtureKeyError("dataset_mix", f"dataset_mix = {mix!r} is not allowed; use one of {', '.join(STRATEGIES)}.")
    if mix == "concat" and weighted:
        raise MixtureKeyError("dataset_mix", "dataset_mix=concat takes every row of every source once, so the weights "
                              "of the dataset list would have no effect: drop the weights, or use dataset_mix="
                              "interleave_under (stop when the first source runs out) or interleave_over (oversample "
                              "until the last runs out).")
    if mix == "concat" and streaming:
        raise MixtureKeyError("dataset_mix", "dataset_mix=concat shuffles the whole concatenation, which "
                              "dataset_streaming=true never holds: use interleave_under or interleave_over.")
    return mix


def probabilities(sources: Sequence[dict[str, Any]]) -> list[float]:
    """The sampling probability of each source: its weight normalised, or equal shares."""
    weights = [s.get("weight") or 1.0 for s in sources]
    total = sum(weights)
    return [w / total for w in weights]


def _cumulative(probs: Sequence[float]) -> list[float]:
    acc, out = 0.0, []
    for p in probs:
        acc += p
        out.append(acc)
    out[-1] = 1.0
    return out


def _pick(rng: random.Random, cumulative: Sequence[float]) -> int:
    x = rng.random()
    for k, c in enumerate(cumulative):
        if x < c:
            return k
    return len(cumulative) - 1


def mixture_order(lengths: Sequence[int], probs: Sequence[float], strategy: str, seed: int) -> tuple[array, array]:
    """(source, row) of every row of the mixture, as two arrays: a pure function of the arguments.

    * ``concat``: every row of source 0, then of source 1, ... (the batch plan shuffles them);
    * ``interleave_under``: draw a source by ``probs`` for each row, taking its next row;
      stop at the first draw of a source that has none left (``first_exhausted``);
    * ``interleave_over``: the same, but a source that runs out starts a new pass (in a new
      order); stop once every source has been read to its end (``all_exhausted``).

    Within a source the rows are taken in a seeded order (a new one per pass), so
    ``interleave_under`` does not always keep the head of the big file.
    """
    src, row = array("l"), array("l")
    if strategy == "concat":
        for k, n in enumerate(lengths):
            src.extend([k] * n)
            row.extend(range(n))
        return src, row
    rng = random.Random(f"mixture:{seed}")
    cumulative = _cumulative(probs)
    passes = [0] * len(lengths)
    orders = [_order(n, seed, k, 0) for k, n in enumerate(lengths)]
    cursor = [0] * len(lengths)
    done = [n == 0 for n in lengths]
    if all(done):
        return src, row
    while True:
        k = _pick(rng, cumulative)
        if cursor[k] == lengths[k]:
            if strategy == "interleave_under" or lengths[k] == 0:
                return src, row
            passes[k] += 1
            orders[k], cursor[k] = _order(lengths[k], seed, k, passes[k]), 0
        src.append(k)
        row.append(orders[k][cursor[k]])
        cursor[k] += 1
        if cursor[k] == lengths[k] and not done[k]:
            done[k] = True
            if strategy == "interleave_over" and all(done):
                return src, row


def _order(n: int, seed: int, source: int, pass_: int) -> list[int]:
    order = list(range(n))
    random.Random(f"mixture:{seed}:{source}:{pass_}").shuffle(order)
    return order


class MixedRows(Sequence):
    """The mixture as one row sequence: row ``j`` is row ``rows[j]`` of source ``sources[j]``.

    A view over the sources' own (lazily normalised) rows, so nothing is copied; it
    pickles as its parts for ``tokenize_num_proc`` workers.
    """

    def __init__(self, parts: Sequence[Sequence[dict[str, Any]]], src: array, row: array) -> None:
        self.parts, self.src, self.row = list(parts), src, row

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(j)
        return self.parts[self.src[j]][self.row[j]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for j in range(len(self)):
            yield self[j]

    def take(self, indices: Sequence[int]) -> "MixedRows":
        return MixedRows(self.parts, array("l", (self.src[i] for i in indices)), array("l", (self.row[i] for i in indices)))

    def counts(self) -> list[int]:
        """Rows of the mixture drawn from each source."""
        out = [0] * len(self.parts)
        for k in self.src:
            out[k] += 1
        return out

    def __repr__(self) -> str:
        return f"<MixedRows: {len(self)} rows of {len(self.parts)} sources>"


def interleave_streams(open_epoch: Sequence[Callable[[int], Iterator[dict[str, Any]]]], probs: Sequence[float],
                       strategy: str, seed: int, epoch: int) -> Iterator[dict[str, Any]]:
    """One epoch of a streamed mixture: each row from a source drawn by ``probs``.

    ``open_epoch[k](p)`` is pass ``p`` of source ``k`` (its own seeded shuffle); the draws
    are seeded by (seed, epoch), so the rows are a pure function of those and a resume can
    skip the rows a checkpoint counted. Stopping as in :func:`mixture_order`.
    """
    rng = random.Random(f"mixture-stream:{seed}:{epoch}")
    cumulative = _cumulative(probs)
    n = len(open_epoch)
    passes = [epoch] * n
    its = [iter(open_epoch[k](epoch)) for k in range(n)]
    done = [False] * n
    while True:
        k = _pick(rng, cumulative)
        try:
            item = next(its[k])
        except StopIteration:
            if strategy == "interleave_under":
                return
            done[k] = True
            if all(done):
                return
            passes[k] += 1
            its[k] = iter(open_epoch[k](passes[k]))
            try:
                item = next(its[k])
            except StopIteration:  # an empty source
                return
        yield item


def source_label(sources: Sequence[dict[str, Any]]) -> str:
    """One line naming a mixture: ``a.jsonl (0.7) + b.jsonl (0.3)``."""
    from kitchen.io.secrets import redact_url

    return " + ".join(redact_url(s["path"]) + (f" ({s['weight']:g})" if s.get("weight") is not None else "")
                      for s in sources)


def dataset_label(value: Any) -> str:
    """``dataset`` for messages: the string as given, or a list's :func:`source_label`."""
    return source_label(value) if isinstance(value, list) else str(value)


__all__ = ["DEFAULT_WEIGHTED", "dataset_label", "STRATEGIES", "SOURCE_KEYS", "MixedRows", "MixtureKeyError", "interleave_streams",
           "mixture_order", "parse_sources", "probabilities", "source_label", "strategy_of"]
