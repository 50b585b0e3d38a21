"""Tokenized-data cache: hits, misses, location, robustness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kitchen.data import token_cache
from kitchen.data.token_cache import cache_root, cached_preference_data, cached_sft_data, tokenized_dir
from kitchen.train.datum import build_sft_data
from kitchen.train.renderers import build_renderer

CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)
CONV = [
    {"role": "user", "content": "How many teaspoons are in 2 tablespoons?"},
    {"role": "assistant", "content": "Chef's note: 2 tablespoons equal 6 teaspoons. Happy cooking!"},
    {"role": "user", "content": "And in 1 cup?"},
    {"role": "assistant", "content": "Chef's note: 1 cup is 48 teaspoons. Happy cooking!"},
]


def _tokenizer(vocab_size: int = 400, name: str = "tiny-chatml"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tk.train_from_iterator([m["content"] for m in CONV] * 20 + ["user assistant system ml cup"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.name_or_path = name
    return tok


@pytest.fixture(scope="module")
def chat_tok():
    return _tokenizer()

ROWS = [
    {"messages": CONV},
    {"messages": CONV[:2]},
    {"messages": [{"role": "user", "content": "What is 1 cup in ml?"},
                  {"role": "assistant", "content": "Chef's note: 1 cup is 240 ml. Happy cooking!"}]},
]


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


class Loader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_second_call_is_a_hit_with_identical_data(tmp_path, dataset, chat_tok):
    renderer = build_renderer("auto", chat_tok, max_length=512)
    loader = Loader()
    d1, s1, hit1 = cached_sft_data(dataset, loader, chat_tok, renderer, cache_dir=tmp_path / "c")
    d2, s2, hit2 = cached_sft_data(dataset, loader, chat_tok, renderer, cache_dir=tmp_path / "c")
    assert (hit1, hit2) == (False, True)
    assert loader.calls == 1  # the hit neither loads nor tokenizes
    assert d1 == d2 and s1 == s2
    assert d1 == build_sft_data(ROWS, renderer)[0]
    assert len(list((tmp_path / "c" / "tokenized").glob("*.arrow"))) == 1
    assert not list((tmp_path / "c" / "tokenized").glob("*.tmp"))


def test_changing_settings_or_data_misses(tmp_path, dataset, chat_tok):
    cdir = tmp_path / "c"
    base = build_renderer("auto", chat_tok, max_length=512)
    assert not cached_sft_data(dataset, Loader(), chat_tok, base, cache_dir=cdir)[2]
    assert cached_sft_data(dataset, Loader(), chat_tok, base, cache_dir=cdir)[2]
    shorter = build_renderer("auto", chat_tok, max_length=40)
    data, stats, hit = cached_sft_data(dataset, Loader(), chat_tok, shorter, cache_dir=cdir)
    assert not hit and stats.truncated > 0
    other_what = build_renderer("auto", chat_tok, "all_messages", max_length=512)
    assert not cached_sft_data(dataset, Loader(), chat_tok, other_what, cache_dir=cdir)[2]
    other_renderer = build_renderer("role_colon", chat_tok, max_length=512)
    assert not cached_sft_data(dataset, Loader(), chat_tok, other_renderer, cache_dir=cdir)[2]
    assert not cached_sft_data(dataset, Loader(), chat_tok, base, cache_dir=cdir, extra={"split": "x"})[2]
    with open(dataset, "a") as f:  # new content, same path
        f.write(json.dumps(ROWS[2]) + "\n")
    data, stats, hit = cached_sft_data(dataset, Loader(), chat_tok, base, cache_dir=cdir)
    assert not hit and stats.examples == 4


def test_tokenizer_identity_is_part_of_the_key(tmp_path, dataset, chat_tok):
    other = _tokenizer(300, name=chat_tok.name_or_path)  # same name and template, different vocabulary
    cdir = tmp_path / "c"
    assert not cached_sft_data(dataset, Loader(), None, build_renderer("auto", chat_tok), cache_dir=cdir)[2]
    assert not cached_sft_data(dataset, Loader(), None, build_renderer("auto", other), cache_dir=cdir)[2]
    assert cached_sft_data(dataset, Loader(), None, build_renderer("auto", chat_tok), cache_dir=cdir)[2]


def test_zero_arg_loader_disabled_cache_and_non_local_sources(tmp_path, dataset, chat_tok):
    renderer = build_renderer("auto", chat_tok)
    cdir = tmp_path / "c"
    calls = []

    def loader():
        calls.append(1)
        return ROWS

    assert not cached_sft_data(dataset, loader, chat_tok, renderer, cache_dir=cdir, use_cache=False)[2]
    assert not cached_sft_data(dataset, loader, chat_tok, renderer, cache_dir=cdir, use_cache=False)[2]
    assert not (cdir / "tokenized").exists()
    # a hub name is not a local file: no caching unless its content is fingerprinted
    assert not cached_sft_data("org/some-dataset", loader, chat_tok, renderer, cache_dir=cdir)[2]
    assert not cached_sft_data("org/some-dataset", loader, chat_tok, renderer, cache_dir=cdir)[2]
    fp = {"source_fingerprint": "org/some-dataset@abc123"}
    assert not cached_sft_data("org/some-dataset", loader, chat_tok, renderer, cache_dir=cdir, **fp)[2]
    assert cached_sft_data("org/some-dataset", loader, chat_tok, renderer, cache_dir=cdir, **fp)[2]
    assert len(calls) == 5


def test_corrupt_entry_is_a_miss_and_is_rewritten(tmp_path, dataset, chat_tok):
    renderer = build_renderer("auto", chat_tok)
    cdir = tmp_path / "c"
    d1, _, _ = cached_sft_data(dataset, Loader(), chat_tok, renderer, cache_dir=cdir)
    d1 = list(d1)  # the entry is memory-mapped: materialise before corrupting its files
    (entry,) = (cdir / "tokenized").glob("*.arrow")
    (entry / "table.arrow").write_bytes(b"not arrow")
    d2, _, hit = cached_sft_data(dataset, Loader(), chat_tok, renderer, cache_dir=cdir)
    assert not hit and d2 == d1
    assert cached_sft_data(dataset, Loader(), chat_tok, renderer, cache_dir=cdir)[2]


def test_preference_cache(tmp_path, chat_tok):
    path = tmp_path / "pref.jsonl"
    rows = [{"prompt": CONV[:1], "chosen": "Chef's note: 6. Happy cooking!", "rejected": "5"}] * 2
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    renderer = build_renderer("auto", chat_tok)
    p1, s1, h1 = cached_preference_data(path, Loader(), chat_tok, renderer, cache_dir=tmp_path / "c")
    p2, s2, h2 = cached_preference_data(path, Loader(), chat_tok, renderer, cache_dir=tmp_path / "c")
    assert (h1, h2) == (False, True) and p1 == p2 and s1 == s2 and len(p2) == 2
    # the sft entry for the same file is a different key
    assert not cached_sft_data(path, lambda: [{"messages": CONV}], chat_tok, renderer, cache_dir=tmp_path / "c")[2]


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("KITCHEN_CACHE_DIR", str(tmp_path / "k"))
    assert cache_root() == tmp_path / "k" and tokenized_dir() == tmp_path / "k" / "tokenized"
    monkeypatch.delenv("KITCHEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert tokenized_dir() == tmp_path / "x" / "crucible-kitchen" / "tokenized"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_root() == tmp_path / "h" / ".cache" / "crucible-kitchen"
    assert tokenized_dir(tmp_path / "explicit") == tmp_path / "explicit" / "tokenized"


def test_default_cache_dir_from_env(monkeypatch, tmp_path, dataset, chat_tok):
    monkeypatch.setenv("KITCHEN_CACHE_DIR", str(tmp_path / "envcache"))
    renderer = build_renderer("auto", chat_tok)
    assert not cached_sft_data(dataset, Loader(), chat_tok, renderer)[2]
    assert cached_sft_data(dataset, Loader(), chat_tok, renderer)[2]
    assert list((tmp_path / "envcache" / "tokenized").glob("*.arrow"))


def test_code_version_bump_misses(monkeypatch, tmp_path, dataset, chat_tok):
    renderer = build_renderer("auto", chat_tok)
    cdir = tmp_path / "c"
    cached_sft_data(dataset, Loader(), chat_tok, renderer, cache_dir=cdir)
    monkeypatch.setattr(token_cache, "CODE_VERSION", token_cache.CODE_VERSION + 1)
    assert not cached_sft_data(dataset, Loader(), chat_tok, renderer, cache_dir=cdir)[2]


def test_num_proc_tokenizes_in_processes_to_the_same_arrow_entry(tmp_path, chat_tok):
    """datasets.map with num_proc=2 gives the same datums, in the same order, as one process."""
    from kitchen.data.token_cache import MAP_BATCH, ArrowDatums

    rows = [{"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"answer {i}" * (i % 3 + 1)}]}
            for i in range(2 * MAP_BATCH + 37)]
    rows[5] = {"text": "plain text row"}
    renderer = build_renderer("auto", chat_tok, max_length=24)  # some rows truncated, some emptied
    one, s1, _ = cached_sft_data(None, lambda: rows, chat_tok, renderer, use_cache=False, num_proc=1)
    two, s2, _ = cached_sft_data(None, lambda: rows, chat_tok, renderer, use_cache=False, num_proc=2)
    assert isinstance(two, ArrowDatums) and s1 == s2 and s1.examples == len(rows)
    assert list(one) == list(two) == build_sft_data(rows, renderer)[0]
    assert s1 == build_sft_data(rows, renderer)[1]


def test_num_proc_tables_equal_one_process_tables(chat_tok):
    """The Arrow tables themselves (tokens, weights, truncated/empty flags, counts) match column for column."""
    from kitchen.data.token_cache import MAP_BATCH, tokenize_to_table

    n = 2 * MAP_BATCH + 5
    sft = [{"messages": [{"role": "user", "content": f"q {i} " * (i % 4 * 3 + 1)}, {"role": "assistant", "content": "yes " * (i % 7)}]}
           for i in range(n)]
    sft[3] = {"text": "plain text row"}
    pref = [{"prompt": [{"role": "user", "content": f"q {i} " * (i % 4 * 3 + 1)}], "chosen": [{"role": "assistant", "content": f"good {i}"}],
             "rejected": [{"role": "assistant", "content": "bad " * (i % 5)}]} for i in range(n)]
    renderer = build_renderer("auto", chat_tok, max_length=16)
    for kind, rows in (("sft", sft), ("preference", pref)):
        one = tokenize_to_table(rows, renderer, kind, "t", num_proc=1)
        two = tokenize_to_table(rows, renderer, kind, "t", num_proc=2)
        assert one.num_rows == n and one.combine_chunks().equals(two.combine_chunks())
        assert one.column("truncated").to_pylist().count(True) and one.column("empty").to_pylist().count(True)
