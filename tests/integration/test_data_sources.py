"""Every data source through the real `kitchen run` on the tiny model: CSV, JSON, Parquet
(file and directory of shards), save_to_disk with a split, hub datasets by name (offline,
from a huggingface_hub cache the test writes in the hub's own layout), test_split_fraction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import dataset_line, read_jsonl, run_completed
from data_fixtures import (
    alpaca_rows,
    make_hub_cache,
    messages_rows,
    prompt_completion_rows,
    sharegpt_rows,
    trained_per_answer,
)

TINY = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "batch_size=2", "max_steps=1", "num_preview_samples=0",
        "telemetry=jsonl", "eval_max_examples=4")


def run_ok(kitchen, run_dir: Path, *overrides: str, env: dict | None = None) -> dict:
    return run_completed(kitchen, run_dir, *TINY, *overrides, env=env)



def test_csv_train_and_parquet_shard_directory_test(kitchen, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = tmp_path / "alpaca.csv"
    rows = alpaca_rows(6)
    csv.write_text("instruction,input,output\n" + "".join(f"{r['instruction']},{r['input']},{r['output']}\n" for r in rows))
    shards = tmp_path / "shards"
    shards.mkdir()
    pc = prompt_completion_rows(5)
    pq.write_table(pa.Table.from_pylist(pc[:3]), shards / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(pc[3:]), shards / "part-00001.parquet")
    info = run_ok(kitchen, tmp_path / "r", f"dataset={csv}", f"test_dataset={shards}")
    line = dataset_line(tmp_path / "r")
    assert "6 train rows, format alpaca (detected)" in line and "5 test rows, format prompt_completion (detected)" in line
    assert info["data_stats"]["train_data_stats"]["trained_tokens"] == trained_per_answer(6)
    assert info["data_stats"]["test_data_stats"]["trained_tokens"] == trained_per_answer(5)


def test_save_to_disk_dict_with_dataset_split_and_parquet_file(kitchen, tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({
        "sft_train": datasets.Dataset.from_list(sharegpt_rows(6)),
        "sft_eval": datasets.Dataset.from_list(sharegpt_rows(3)),
    }).save_to_disk(str(saved))
    info = run_ok(kitchen, tmp_path / "r", f"dataset={saved}", "dataset_split=sft_train",
                  f"test_dataset={saved}", "test_dataset_split=sft_eval")
    assert "6 train rows, format sharegpt (detected); 3 test rows" in dataset_line(tmp_path / "r")
    assert info["data_stats"]["test_data_stats"]["trained_tokens"] == trained_per_answer(3)
    # an unknown split names the ones that exist, before any model is loaded
    r = kitchen("validate", *TINY, f"dataset={saved}", "dataset_split=train", "~test_dataset", f"run_dir={tmp_path / 'n'}")
    assert r.code == 2 and "no split 'train'" in r.err and "sft_train, sft_eval" in r.err and "Traceback" not in r.err, r


def test_json_file_with_test_split_fraction_is_reproducible(kitchen, tmp_path):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(messages_rows(8)))
    info = run_ok(kitchen, tmp_path / "r", f"dataset={data}", "~test_dataset", "test_split_fraction=0.25", "seed=3")
    assert "6 train rows, format messages (detected); 2 test rows (test_split_fraction=0.25" in dataset_line(tmp_path / "r")
    assert info["data_stats"]["test_data_stats"]["examples"] == 2
    evals = [row for row in read_jsonl(tmp_path / "r" / "metrics.jsonl") if row.get("split") == "test"]
    assert evals, "the carved test set is evaluated"
    # both test_dataset and a fraction: refused
    r = kitchen("validate", *TINY, f"dataset={data}", f"test_dataset={data}", "test_split_fraction=0.25", f"run_dir={tmp_path / 'n'}")
    assert r.code == 2 and "test_split_fraction" in r.err and "~test_dataset" in r.err, r


def test_carving_is_a_pure_function_of_rows_fraction_and_seed():
    from kitchen.data.load import LoadedSplit, carve_test

    rows = [{"text": str(i)} for i in range(20)]
    a = carve_test(LoadedSplit(rows, "f"), 0.25, 7)
    b = carve_test(LoadedSplit(rows, "f"), 0.25, 7)
    c = carve_test(LoadedSplit(rows, "f"), 0.25, 8)
    assert a[1].rows == b[1].rows and len(a[1].rows) == 5 and len(a[0].rows) == 15
    assert a[1].rows != c[1].rows
    assert sorted(r["text"] for r in a[0].rows + a[1].rows) == sorted(r["text"] for r in rows)
    assert a[0].extra != a[1].extra  # the token cache keeps the two parts apart


README = """---
configs:
- config_name: sharegpt
  data_files:
  - split: train
    path: sharegpt/train.jsonl
  - split: test
    path: sharegpt/test.jsonl
- config_name: alpaca
  data_files:
  - split: train
    path: alpaca/train.jsonl
---
# tiny chat
"""


@pytest.fixture
def hub_env(tmp_path):
    """A dataset repo in huggingface_hub's cache layout; no network (HF_HUB_OFFLINE=1)."""
    hf_home = tmp_path / "hf"
    files = {
        "README.md": README,
        "sharegpt/train.jsonl": "".join(json.dumps(r) + "\n" for r in sharegpt_rows(6)),
        "sharegpt/test.jsonl": "".join(json.dumps(r) + "\n" for r in sharegpt_rows(2)),
        "alpaca/train.jsonl": "".join(json.dumps(r) + "\n" for r in alpaca_rows(4)),
    }
    make_hub_cache(hf_home, "kitchen-test/tiny-chat", files)
    return {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "ds-cache"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_hub_dataset_by_name_with_subset_and_split_offline(kitchen, tmp_path, hub_env):
    info = run_ok(kitchen, tmp_path / "r", "dataset=kitchen-test/tiny-chat", "dataset_subset=sharegpt",
                  "test_dataset=kitchen-test/tiny-chat", "test_dataset_subset=sharegpt", "test_dataset_split=test", env=hub_env)
    assert "6 train rows, format sharegpt (detected); 2 test rows" in dataset_line(tmp_path / "r")
    assert info["data_stats"]["train_data_stats"]["trained_tokens"] == trained_per_answer(6)
    r = kitchen("validate", *TINY, "dataset=kitchen-test/tiny-chat", "dataset_subset=alpaca", "~test_dataset",
                f"run_dir={tmp_path / 'n'}", env=hub_env)
    assert r.code == 0 and "4 train rows, format alpaca (detected)" in r.out, r


def test_hub_bad_split_subset_and_missing_repo_are_clear(kitchen, tmp_path, hub_env):
    common = (*TINY, "~test_dataset", f"run_dir={tmp_path / 'n'}")
    r = kitchen("validate", *common, "dataset=kitchen-test/tiny-chat", "dataset_subset=sharegpt", "dataset_split=validation", env=hub_env)
    assert r.code == 2 and "no split 'validation'" in r.err and "train, test" in r.err, r
    r = kitchen("validate", *common, "dataset=kitchen-test/tiny-chat", "dataset_subset=nope", env=hub_env)
    assert r.code == 2 and "no subset 'nope'" in r.err and "Traceback" not in r.err, r
    r = kitchen("validate", *common, "dataset=kitchen-test/not-there", env=hub_env)
    assert r.code == 2 and "hf download kitchen-test/not-there --repo-type dataset" in r.err, r
    where = " ".join(r.err.split())  # the paragraph names the caches the user's environment points at
    assert f"downloads in {hub_env['HF_HUB_CACHE']}" in where and f"prepared datasets in {hub_env['HF_DATASETS_CACHE']}" in where, r
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_carving_lazily_read_rows_equals_carving_a_list(tmp_path):
    """Rows read from disk on access (NormalisedRows) carve exactly as the same rows in a list."""
    from kitchen.adapters.hf_datasets import HFDatasetStore
    from kitchen.data.load import LoadedSplit, carve_test, load_split

    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(30)))
    lazy = load_split(HFDatasetStore(cache_dir=tmp_path / "hf"), str(path))
    assert not isinstance(lazy.rows, list)
    as_list = LoadedSplit(list(lazy.rows), lazy.source, lazy.format, lazy.fingerprint, lazy.extra)
    for a, b in zip(carve_test(lazy, 0.2, 3), carve_test(as_list, 0.2, 3)):
        assert a.rows == b.rows and list(a.rows) == b.rows and a.extra == b.extra
