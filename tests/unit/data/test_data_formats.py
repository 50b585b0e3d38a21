"""Every SFT/preference data format through the real `kitchen run` on the tiny model.

The tiny tokenizer is byte-level, so run.json's ``data_stats`` (examples kept, trained
tokens) says exactly which tokens each format trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import dataset_line, run_completed
from data_fixtures import (
    alpaca_rows,
    answer,
    conversational_prompt_completion_rows,
    messages_rows,
    prompt_completion_rows,
    question,
    sharegpt_rows,
    text_rows,
    trained_per_answer,
    write_jsonl,
)

TINY = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "batch_size=2", "max_steps=1", "num_preview_samples=0",
        "telemetry=jsonl", "eval_max_examples=4")


def run_ok(kitchen, run_dir: Path, *overrides: str) -> dict:
    return run_completed(kitchen, run_dir, *TINY, *overrides)



def test_sharegpt_train_and_alpaca_test_are_detected_and_trained_on_the_answers(kitchen, tmp_path):
    train = write_jsonl(tmp_path / "sharegpt.jsonl", sharegpt_rows(6))
    test = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(4))
    info = run_ok(kitchen, tmp_path / "r", f"dataset={train}", f"test_dataset={test}")
    line = dataset_line(tmp_path / "r")
    assert "6 train rows, format sharegpt (detected)" in line and "4 test rows, format alpaca (detected)" in line
    stats = info["data_stats"]
    assert stats["train_data_stats"]["kept"] == 6
    assert stats["train_data_stats"]["trained_tokens"] == trained_per_answer(6)  # only the gpt turns
    assert stats["test_data_stats"]["trained_tokens"] == trained_per_answer(4)  # only the outputs


def test_prompt_completion_strings_and_conversational(kitchen, tmp_path):
    train = write_jsonl(tmp_path / "pc.jsonl", prompt_completion_rows(6))
    test = write_jsonl(tmp_path / "pc_conv.jsonl", conversational_prompt_completion_rows(4))
    info = run_ok(kitchen, tmp_path / "r", f"dataset={train}", f"test_dataset={test}", "train_on_what=all_messages")
    assert "format prompt_completion (detected)" in dataset_line(tmp_path / "r")
    # the loss covers the completion only, even with train_on_what=all_messages
    assert info["data_stats"]["train_data_stats"]["trained_tokens"] == trained_per_answer(6)
    assert info["data_stats"]["test_data_stats"]["trained_tokens"] == trained_per_answer(4)


def test_messages_with_content_parts_and_per_message_weight(kitchen, tmp_path):
    rows = []
    for i in range(4):
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": f"{i}?"}]},
            {"role": "assistant", "content": "Wrong guess.", "weight": 0},
            {"role": "user", "content": "Try again."},
            {"role": "assistant", "content": [{"type": "text", "text": answer(i)}], "weight": 1},
        ]})
    # weight 1 on an early turn trains it even though train_on_what=last_assistant_message
    rows.append({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "weight": 1},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"},
    ]})
    train = write_jsonl(tmp_path / "weighted.jsonl", rows)
    info = run_ok(kitchen, tmp_path / "r", f"dataset={train}", "~test_dataset")
    assert "format messages (detected)" in dataset_line(tmp_path / "r")
    expected = trained_per_answer(4) + (len("Hello!") + 1) + (len("Goodbye!") + 1)
    assert info["data_stats"]["train_data_stats"]["trained_tokens"] == expected


def test_text_rows_train_on_every_token(kitchen, tmp_path):
    rows = text_rows(5)
    train = write_jsonl(tmp_path / "text.jsonl", rows)
    info = run_ok(kitchen, tmp_path / "r", f"dataset={train}", "~test_dataset")
    assert "format text (detected)" in dataset_line(tmp_path / "r")
    stats = info["data_stats"]["train_data_stats"]
    assert stats["trained_tokens"] == stats["total_tokens"] == sum(len(r["text"].encode()) for r in rows)


def test_column_mapping_and_explicit_format(kitchen, tmp_path):
    rows = [{"dialog": r["messages"], "id": k} for k, r in enumerate(messages_rows(4))]
    train = write_jsonl(tmp_path / "dialog.jsonl", rows)
    info = run_ok(kitchen, tmp_path / "r", f"dataset={train}", "~test_dataset", "dataset_columns.messages=dialog",
                  "dataset_format=messages")
    assert "4 train rows, format messages (dataset_format, messages<-dialog)" in dataset_line(tmp_path / "r")
    assert info["data_stats"]["train_data_stats"]["trained_tokens"] == trained_per_answer(4)


def test_preference_strings_and_trl_conversational(kitchen, tmp_path):
    conv = [{"chosen": [{"role": "user", "content": question(i)}, {"role": "assistant", "content": answer(i)}],
             "rejected": [{"role": "user", "content": question(i)}, {"role": "assistant", "content": "No idea."}]}
            for i in range(4)]  # TRL implicit prompt: the shared user turn becomes the prompt
    strings = [{"prompt": question(i), "chosen": answer(i), "rejected": "No idea."} for i in range(3)]
    train = write_jsonl(tmp_path / "pref_conv.jsonl", conv)
    test = write_jsonl(tmp_path / "pref_str.jsonl", strings)
    r = kitchen("run", "recipe=dpo_basic", "adapters=local", "model=tiny-llama", "batch_size=2", "max_steps=1",
                "num_preview_samples=0", "telemetry=jsonl", f"dataset={train}", f"test_dataset={test}",
                f"run_dir={tmp_path / 'r'}")
    assert r.code == 0, r
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert "4 train rows, format preference (detected); 3 test rows" in dataset_line(tmp_path / "r")
    # per pair: chosen answer + rejected "No idea." (each with <|im_end|>); prompts untrained
    assert info["data_stats"]["train_data_stats"]["trained_tokens"] == trained_per_answer(4) + 4 * (len("No idea.") + 1)
    assert info["data_stats"]["test_data_stats"]["trained_tokens"] == trained_per_answer(3) + 3 * (len("No idea.") + 1)


@pytest.mark.parametrize(
    "rows, args, needles",
    [
        ([{"dialog": "x", "meta": 1}], (), ["keys: \"dialog\", \"meta\"", "sharegpt", "alpaca", "prompt_completion",
                                           "dataset_columns"]),
        (sharegpt_rows(2) + [{"conversations": [{"from": "alien", "value": "x"}]}], (),
         ["line 3", "conversations[0].from", "'alien'"]),
        (messages_rows(1) + [{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]}], (),
         ["line 2", "messages[0].content[0]", "image_url"]),
        (messages_rows(1) + [{"messages": [{"role": "assistant", "content": "a", "weight": 0.5}]}], (),
         ["line 2", "messages[0].weight", "0 or 1"]),
        (alpaca_rows(2) + [{"instruction": "x", "output": 3}], (), ["line 3", "field output", "string"]),
        (messages_rows(2), ("dataset_columns.messages=dialog",), ["dataset_columns.messages='dialog'", "Columns in its first row: messages"]),
        (messages_rows(2), ("dataset_format=sharegp",), ["dataset_format='sharegp'", "allowed values", "Did you mean 'sharegpt'"]),
    ],
    ids=["undetectable", "sharegpt-speaker", "content-part", "weight", "alpaca-output", "unknown-column", "unknown-format"],
)
def test_bad_data_is_one_paragraph_naming_file_line_and_field(kitchen, tmp_path, rows, args, needles):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    # validate catches it without loading model weights; run says the same
    for command in ("validate", "run"):
        r = kitchen(command, "recipe=sl_basic", "adapters=local", "model=tiny-llama", f"dataset={data}", "~test_dataset",
                    f"run_dir={tmp_path / 'never'}", *args)
        assert r.code == 2, r
        assert "Traceback" not in r.err and str(data) in r.err or "dataset_format" in r.err, r
        for needle in needles:
            assert needle in r.err, (needle, r)
        assert not (tmp_path / "never" / "run.json").exists() and not (tmp_path / "never" / "config.yaml").exists()
