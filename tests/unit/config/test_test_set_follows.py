"""dataset= on the command line takes the recipe's test set with it (issue 24 item 2).

Runs data.md's two `dataset_columns` examples as written (validate), then on noop, and
checks `kitchen data inspect` names each split's source.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import read_jsonl

DIALOGS = [{"dialog": [{"role": "user", "content": f"What is {i} + {i}?"},
                       {"role": "assistant", "content": f"{i} + {i} is {2 * i}."}]} for i in range(24)]


@pytest.fixture
def scratch(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dialogs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DIALOGS))
    (data / "qa.csv").write_text("question,answer\n" + "".join(f"What is {i} times 2?,It is {2 * i}.\n" for i in range(24)))
    return tmp_path


DOC_EXAMPLES = [
    ["dataset=data/dialogs.jsonl", "dataset_columns.messages=dialog"],
    ["dataset=data/qa.csv", "dataset_columns.prompt=question", "dataset_columns.completion=answer"],
]


@pytest.mark.parametrize("args", DOC_EXAMPLES, ids=["dialogs", "qa"])
def test_data_md_column_examples_validate_and_run(kitchen, scratch, args):
    r = kitchen("validate", *args, cwd=scratch)
    assert r.code == 0, r
    assert "recipe's test set" in r.err and "chat_sft/test.jsonl" in r.err, r.err
    assert len([line for line in r.err.splitlines() if "recipe's test set" in line]) == 1
    run_dir = scratch / "run"
    r = kitchen("run", *args, "adapters=noop", "max_steps=2", "batch_size=2", "eval_every=1", f"run_dir={run_dir}", cwd=scratch)
    assert r.code == 0, r
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert not [m for m in read_jsonl(run_dir / "metrics.jsonl") if m.get("split") == "test"]  # no test set: no eval rows


def test_test_split_fraction_carves_off_the_new_data(kitchen, scratch):
    r = kitchen("validate", *DOC_EXAMPLES[0], "test_split_fraction=0.25", "adapters=noop", cwd=scratch)
    assert r.code == 0, r
    assert "test_split_fraction=0.25" in r.err
    r = kitchen("data", "inspect", *DOC_EXAMPLES[0], "test_split_fraction=0.25", "adapters=noop", "-n", "0", "--color", "never", cwd=scratch)
    assert r.code == 0, r
    assert "18 train rows" in r.out and "6 test rows" in r.out, r.out


def test_an_explicit_test_dataset_is_kept(kitchen, scratch):
    r = kitchen("data", "inspect", *DOC_EXAMPLES[0], "test_dataset=data/dialogs.jsonl", "adapters=noop", "-n", "0",
                "--color", "never", cwd=scratch)
    assert r.code == 0, r
    assert "recipe's test set" not in r.err
    assert "24 test rows" in r.out


def test_data_inspect_names_each_splits_source(kitchen, scratch):
    r = kitchen("data", "inspect", "adapters=noop", "-n", "0", "--color", "never", cwd=scratch)
    assert r.code == 0, r
    train = next(line for line in r.out.splitlines() if line.startswith("train source: "))
    test = next(line for line in r.out.splitlines() if line.startswith("test source: "))
    assert train.endswith("chat_sft/train.jsonl") and test.endswith("chat_sft/test.jsonl"), r.out
    r = kitchen("data", "inspect", *DOC_EXAMPLES[0], "adapters=noop", "-n", "0", "--color", "never", cwd=scratch)
    assert r.code == 0, r
    assert "train source: data/dialogs.jsonl" in r.out and "test source: none" in r.out, r.out


def test_the_token_count_is_the_length_it_shows(kitchen, scratch):
    """The tokens column sums the lengths the length column and each example header show."""
    (scratch / "one.jsonl").write_text(json.dumps({"messages": DIALOGS[3]["dialog"]}) + "\n")
    r = kitchen("data", "inspect", "dataset=one.jsonl", "adapters=noop", "-n", "1", "--color", "never", cwd=scratch)
    assert r.code == 0, r
    train = next(line for line in r.out.splitlines() if "│ train" in line)
    cells = [c.strip() for c in train.split("│") if c.strip()]
    tokens, length = int(cells[5]), cells[7].split("/")
    header = int(re.search(r"example 0: (\d+) tokens", r.out).group(1))
    assert tokens == int(length[0]) == int(length[-1]) == header
