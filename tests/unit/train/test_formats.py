"""kitchen.train.formats: detection and normalisation (pure; the CLI tests run the same through a run)."""

from __future__ import annotations

import pytest

from kitchen.errors import ConfigError, DataError
from kitchen.train.formats import (
    FormatChoice,
    choose_format,
    detect,
    normalize_preference,
    normalize_rows,
    normalize_sft,
)


@pytest.mark.parametrize("row, fmt", [
    ({"messages": [], "text": "x"}, "messages"),
    ({"conversations": [], "text": "x"}, "sharegpt"),
    ({"instruction": "i", "output": "o", "text": "x"}, "alpaca"),
    ({"prompt": "p", "completion": "c", "text": "x"}, "prompt_completion"),
    ({"text": "x", "id": 1}, "text"),
    ({"prompt": "p"}, None),
])
def test_detection_order(row, fmt):
    assert detect(row) == fmt


def test_normalised_shapes():
    assert normalize_sft({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt") == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert normalize_sft({"instruction": "Do", "input": "", "output": "ok", "system": "S"}, "alpaca")["messages"] == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Do"}, {"role": "assistant", "content": "ok"}]
    pc = normalize_sft({"prompt": "p", "completion": "c"}, "prompt_completion")["messages"]
    assert [(m["role"], m["weight"]) for m in pc] == [("user", 0.0), ("assistant", 1.0)]
    parts = normalize_sft({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, "messages")
    assert parts["messages"][0]["content"] == "ab"
    mapped = normalize_sft({"dialog": [{"role": "user", "content": "x"}]}, "messages", {"messages": "dialog"})
    assert mapped == {"messages": [{"role": "user", "content": "x"}]}


def test_trl_implicit_prompt_preference():
    conv = lambda a: [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]  # noqa: E731
    out = normalize_preference({"chosen": conv("good"), "rejected": conv("bad")})
    assert out["prompt"] == [{"role": "user", "content": "q"}]
    assert out["chosen"] == [{"role": "assistant", "content": "good"}] and out["rejected"] == [{"role": "assistant", "content": "bad"}]


def test_errors_name_source_row_and_field():
    with pytest.raises(DataError, match=r"f.csv: row 1 does not fit the alpaca format: field output is missing"):
        normalize_rows([{"instruction": "i", "output": "o"}, {"instruction": "i"}], FormatChoice("alpaca", True), "f.csv")
    with pytest.raises(DataError, match=r"keys: \"a\", \"b\".*Accepted formats: messages"):
        choose_format("f.jsonl", {"a": 1, "b": 2})
    with pytest.raises(DataError, match=r"dataset_columns.messages='x'.*Columns in its first row: a"):
        choose_format("f.jsonl", {"a": 1}, columns={"messages": "x"})
    with pytest.raises(ConfigError, match=r"Did you mean 'alpaca'"):
        choose_format("f.jsonl", {"a": 1}, requested="alpca")
