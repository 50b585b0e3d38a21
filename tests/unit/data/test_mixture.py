"""kitchen.data.mixture: the order of a mixture is a pure function of the seed, the weights
hold over the planned batches, the stopping rules are LLaMA-Factory's (concat,
interleave_under = first_exhausted, interleave_over = all_exhausted), and a bad entry names its key."""

from __future__ import annotations

import pytest

from kitchen.data.mixture import (
    MixedRows,
    MixtureKeyError,
    interleave_streams,
    mixture_order,
    parse_sources,
    probabilities,
    strategy_of,
)
from kitchen.train.batching import BatchPlan


def _rows(tag: str, n: int) -> list[dict]:
    return [{"tag": tag, "i": i} for i in range(n)]


def test_weights_hold_over_the_planned_batches():
    """Two sources 0.7 / 0.3: count each source's rows in every batch a 40-step run plans."""
    a, b = _rows("a", 300), _rows("b", 200)
    src, row = mixture_order([300, 200], [0.7, 0.3], "interleave_under", seed=5)
    mixed = MixedRows([a, b], src, row)
    plan = BatchPlan(len(mixed), 8, 1, 40, 5)
    tags = [mixed[i]["tag"] for step in range(plan.total_steps) for i in plan.batch(step).indices]
    share = tags.count("a") / len(tags)
    assert len(tags) == 320 and share == pytest.approx(0.7, abs=0.06)


def test_order_is_a_pure_function_of_the_seed():
    one = mixture_order([50, 20], [0.5, 0.5], "interleave_over", seed=1)
    assert mixture_order([50, 20], [0.5, 0.5], "interleave_over", seed=1) == one
    assert mixture_order([50, 20], [0.5, 0.5], "interleave_over", seed=2) != one


def test_stopping_rules():
    # concat: every row once, in source order (the batch plan shuffles them)
    src, row = mixture_order([3, 2], [0.5, 0.5], "concat", 0)
    assert list(src) == [0, 0, 0, 1, 1] and list(row) == [0, 1, 2, 0, 1]
    # under: stops at the first exhausted source, no row twice
    src, row = mixture_order([100, 10], [0.5, 0.5], "interleave_under", 0)
    pairs = list(zip(src, row))
    assert len(set(pairs)) == len(pairs) and list(src).count(1) == 10 and list(src).count(0) < 100
    # over: every row of every source at least once, the small one oversampled
    src, row = mixture_order([100, 10], [0.5, 0.5], "interleave_over", 0)
    assert set(zip(src, row)) == {(0, i) for i in range(100)} | {(1, i) for i in range(10)}
    assert list(src).count(1) > 10


def test_mixed_rows_view_and_counts():
    src, row = mixture_order([2, 3], [0.5, 0.5], "concat", 0)
    mixed = MixedRows([_rows("a", 2), _rows("b", 3)], src, row)
    assert len(mixed) == 5 and mixed[-1] == {"tag": "b", "i": 2} and mixed[1:3] == [mixed[1], mixed[2]]
    assert mixed.counts() == [2, 3] and list(mixed.take([4, 0])) == [mixed[4], mixed[0]]


@pytest.mark.parametrize(("value", "key"), [
    ([], "dataset"),
    ([{"path": "a.jsonl", "weight": 0}], "dataset[0].weight"),
    ([{"path": "a.jsonl", "weight": -1.5}], "dataset[0].weight"),
    ([{"path": "a.jsonl", "weight": "much"}], "dataset[0].weight"),
    ([{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl"}], "dataset[1].weight"),
    ([{"path": "a.jsonl"}, {"path": "b.jsonl", "wieght": 1}], "dataset[1].wieght"),
    ([{"weight": 1}], "dataset[0].path"),
    ([{"path": "a.jsonl", "columns": "dialog"}], "dataset[0].columns"),
    ([3], "dataset[0]"),
])
def test_parse_sources_names_the_key(value, key):
    with pytest.raises(MixtureKeyError) as info:
        parse_sources(value)
    assert info.value.key == key and str(info.value).startswith(key)


def test_strategy_defaults_and_refusals():
    plain = parse_sources(["a.jsonl", {"path": "b.jsonl", "split": "x"}])
    weighted = parse_sources([{"path": "a.jsonl", "weight": 3}, {"path": "b.jsonl", "weight": 1}])
    assert plain[1] == {"path": "b.jsonl", "weight": None, "split": "x", "subset": None, "format": None, "columns": {}}
    assert strategy_of(plain, None) == "concat" and strategy_of(weighted, None) == "interleave_over"
    assert probabilities(weighted) == [0.75, 0.25] and probabilities(plain) == [0.5, 0.5]
    assert strategy_of(plain, "interleave_under", streaming=True) == "interleave_under"
    for sources, mix, streaming in ((weighted, "concat", False), (plain, None, True), (plain, "concat", True),
                                    (plain, "zip", False)):
        with pytest.raises(MixtureKeyError) as info:
            strategy_of(sources, mix, streaming)
        assert info.value.key == "dataset_mix"


def _epoch_source(tag: str, n: int):
    import random

    def rows(epoch: int):
        order = list(range(n))
        random.Random(f"{tag}:{epoch}").shuffle(order)
        for i in order:
            yield {"tag": tag, "i": i}
    return rows


def test_interleave_streams_is_pure_and_keeps_the_weights():
    sources = [_epoch_source("a", 40), _epoch_source("b", 10)]
    one = list(interleave_streams(sources, [0.8, 0.2], "interleave_over", 3, epoch=0))
    assert one == list(interleave_streams(sources, [0.8, 0.2], "interleave_over", 3, epoch=0))
    assert one != list(interleave_streams(sources, [0.8, 0.2], "interleave_over", 3, epoch=1))
    assert {(r["tag"], r["i"]) for r in one} >= {("a", i) for i in range(40)}  # over: every row of a at least once
    under = list(interleave_streams(sources, [0.5, 0.5], "interleave_under", 3, epoch=0))
    assert [r["tag"] for r in under].count("b") == 10 and len(under) < 50
