"""HFDatasetStore: local files, line-numbered errors, missing/empty files, offline hub names."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from kitchen.adapters.hf_datasets import HFDatasetStore
from kitchen.errors import DataError
from kitchen.ports.stores import DatasetStore

ROWS = [
    {"prompt": "What is 2+2?", "completion": "4"},
    {"prompt": "Capital of France?", "completion": "Paris"},
    {"prompt": "Say hi", "completion": "hi"},
]


@pytest.fixture
def store(tmp_path: Path) -> HFDatasetStore:
    return HFDatasetStore(cache_dir=tmp_path / "hf_cache")  # keep datasets' Arrow cache out of ~


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_is_a_dataset_store(store):
    assert isinstance(store, DatasetStore)


def test_jsonl_loads_and_skips_blank_lines(tmp_path, store):
    path = tmp_path / "train.jsonl"
    path.write_text("\ufeff" + json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n" + json.dumps(ROWS[2]))
    assert store.load(str(path)) == ROWS
    assert store.load(path, split="test") == ROWS  # a file is one split; split is ignored


def test_jsonl_gz(tmp_path, store):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in ROWS))
    assert store.load(str(path)) == ROWS


@pytest.mark.parametrize("shape", ["array", "wrapped", "lines"])
def test_json_shapes(tmp_path, store, shape):
    path = tmp_path / "data.json"
    if shape == "array":
        path.write_text(json.dumps(ROWS, indent=2))
    elif shape == "wrapped":
        path.write_text(json.dumps({"version": 1, "data": ROWS}))
    else:
        write_jsonl(path, ROWS)
    assert store.load(str(path)) == ROWS


def test_csv_and_tsv(tmp_path, store):
    csv = tmp_path / "data.csv"
    csv.write_text("prompt,completion\n" + "".join(f'"{r["prompt"]}",{r["completion"]}\n' for r in ROWS))
    assert store.load(str(csv)) == ROWS
    tsv = tmp_path / "data.tsv"
    tsv.write_text("prompt\tcompletion\n" + "".join(f'{r["prompt"]}\t{r["completion"]}\n' for r in ROWS))
    assert store.load(str(tsv)) == ROWS


def test_parquet(tmp_path, store):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert store.load(str(path)) == ROWS


def test_malformed_jsonl_line_names_file_and_line(tmp_path, store):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS * 10)
    lines = path.read_text().splitlines()
    lines.insert(16, '{"prompt": "x" "completion": "y"}')  # becomes line 17
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        store.load(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: line 17 is not valid JSON (Expecting ',' delimiter: column 16).")
    assert "Each line must be one JSON object." in msg


def test_jsonl_line_that_is_not_an_object(tmp_path, store):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + "[1, 2]\n")
    with pytest.raises(DataError, match=r"line 2 is a JSON array, not a JSON object"):
        store.load(str(path))


def test_jsonl_invalid_utf8(tmp_path, store):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"line 2"):
        store.load(str(path))


def test_malformed_json_file(tmp_path, store):
    path = tmp_path / "data.json"
    path.write_text('[{"a": 1},\n {"a": 2,}]')
    with pytest.raises(DataError, match=r"data.json: not valid JSON .*line 2"):
        store.load(str(path))
    path.write_text(json.dumps([{"a": 1}, 3]))
    with pytest.raises(DataError, match=r"item 1 of the array is a JSON number"):
        store.load(str(path))


def test_missing_file_names_path_and_suggests(tmp_path, store, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        store.load("trian.jsonl")
    msg = str(info.value)
    assert "trian.jsonl" in msg and str(tmp_path / "trian.jsonl") in msg  # as given and absolute
    assert "Did you mean" in msg and str(tmp_path / "train.jsonl") in msg


def test_missing_directory(tmp_path, store):
    with pytest.raises(DataError, match=r"does not exist"):
        store.load(str(tmp_path / "nope" / "train.jsonl"))


@pytest.mark.parametrize("name,content", [
    ("empty.jsonl", ""), ("blank.jsonl", "\n\n  \n"), ("empty.json", "[]"), ("ws.json", "  "),
    ("empty.csv", ""), ("header.csv", "prompt,completion\n"),
])
def test_empty_dataset_is_a_data_error(tmp_path, store, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty"):
        store.load(str(path))


def test_unsupported_extension(tmp_path, store):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"unsupported dataset file type '.txt'"):
        store.load(str(path))


def test_bad_csv_is_a_data_error(tmp_path, store):
    path = tmp_path / "bad.csv"
    path.write_text('a,b\n1,2\n3,"4,5,6\n7,8,9,10\n')
    with pytest.raises(DataError, match=r"bad.csv"):
        store.load(str(path))


def test_directory_with_one_file_and_save_to_disk(tmp_path, store):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "rows.jsonl", ROWS)
    assert store.load(str(folder)) == ROWS
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(saved))
    assert store.load(str(saved)) == ROWS
    assert store.load(str(saved), split="test") == ROWS[:1]
    with pytest.raises(DataError, match=r"no split 'validation'.*train, test"):
        store.load(str(saved), split="validation")


def test_uncached_hub_name_is_a_data_error_without_network(store, monkeypatch):
    # Any attempt to open a socket fails the test: the store must stay offline.
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    import datasets
    import huggingface_hub.constants as hub_constants

    before = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(DataError) as info:
        store.load("someone/definitely-not-cached-dataset-xyz")
    msg = str(info.value)
    assert "someone/definitely-not-cached-dataset-xyz" in msg and "local" in msg and "hf download someone/definitely-not-cached-dataset-xyz --repo-type dataset" in msg
    assert (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE) == before  # offline forced only for the call


def test_cached_hub_dataset_loads_offline(tmp_path, store, monkeypatch):
    """Fake a hub download in the datasets cache layout, then load it by name with no network."""
    import shutil
    import socket

    datasets = pytest.importorskip("datasets")
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    datasets.load_dataset("json", data_files=str(src), cache_dir=str(tmp_path / "scratch"))
    (built,) = [p for p in (tmp_path / "scratch" / "json").glob("*/*/*") if p.is_dir()]
    dst = Path(store.cache_dir) / "someone___tiny_set" / "default" / "0.0.0" / built.name
    shutil.copytree(built, dst)
    (dst / "json-train.arrow").rename(dst / "tiny_set-train.arrow")

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert store.load("someone/tiny_set") == ROWS
    assert store.load("someone/tiny_set", split="train[:1]") == ROWS[:1]
    assert len(store.fingerprint("someone/tiny_set")) == 64
    with pytest.raises(DataError, match=r"no split 'test'"):
        store.load("someone/tiny_set", split="test")


def test_fingerprint_is_sha256_of_content(tmp_path, store):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.fingerprint(str(path)) == expected
    assert store.fingerprint(path) == expected  # memoised, same answer
    path.write_text(path.read_text() + json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    assert store.fingerprint(str(path)) != expected
    with pytest.raises(DataError, match=r"not found"):
        store.fingerprint(str(tmp_path / "missing.jsonl"))
    folder = tmp_path / "dir"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", ROWS)
    assert len(store.fingerprint(str(folder))) == 64


def test_jsonl_rows_stay_on_disk_and_read_back_exactly(store, tmp_path):
    """A JSONL file is indexed by line, not held as dicts; rows read back as written (BOM, CRLF, blank lines)."""
    import pickle

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\n  \n{"a": 2, "b": [1, "x"]}\n{"a": "three"}')
    rows = store.load(str(path))
    want = [{"a": 1}, {"a": 2, "b": [1, "x"]}, {"a": "three"}]
    assert not isinstance(rows, list) and len(rows) == 3
    assert rows == want and list(rows) == want and rows[1:] == want[1:] and rows[-1] == want[-1]
    assert pickle.loads(pickle.dumps(rows)) == want  # what a spawned tokenizer worker receives: offsets, not rows
