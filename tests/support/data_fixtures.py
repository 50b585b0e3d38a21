"""Tiny dataset files in every shape kitchen reads, written by the tests that use them.

The tiny test model's tokenizer is byte-level (one token per UTF-8 byte, ChatML specials),
so the number of trained tokens per example is known exactly: an assistant turn trains
``len(content) + 1`` tokens (its bytes and ``<|im_end|>``), a text row ``len(text)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answer(i: int) -> str:
    return f"Answer number {i}."


def question(i: int) -> str:
    return f"What is {i} plus {i}?"


def messages_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": question(i)}, {"role": "assistant", "content": answer(i)}]} for i in range(n)]


def sharegpt_rows(n: int) -> list[dict]:
    return [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": question(i)},
                               {"from": "gpt", "value": answer(i)}]} for i in range(n)]


def alpaca_rows(n: int) -> list[dict]:
    return [{"instruction": "Add the numbers.", "input": f"{i} and {i}", "output": answer(i)} for i in range(n)]


def prompt_completion_rows(n: int) -> list[dict]:
    return [{"prompt": question(i), "completion": answer(i)} for i in range(n)]


def conversational_prompt_completion_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": question(i)}], "completion": [{"role": "assistant", "content": answer(i)}]}
            for i in range(n)]


def text_rows(n: int) -> list[dict]:
    return [{"text": f"Plain text number {i} for continued pretraining."} for i in range(n)]


def trained_per_answer(rows_n: int) -> int:
    """Trained tokens of ``rows_n`` rows whose last assistant turn is ``answer(i)``."""
    return sum(len(answer(i).encode()) + 1 for i in range(rows_n))


def make_hub_cache(hf_home: Path, repo_id: str, files: dict[str, str]) -> Path:
    """A dataset repo in huggingface_hub's own cache layout under ``hf_home/hub``:
    ``datasets--OWNER--NAME/{blobs/<sha256>, refs/main, snapshots/<commit>/<path> -> blob}``.
    Returns the snapshot dir."""
    repo_dir = hf_home / "hub" / ("datasets--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    for rel, content in files.items():
        data = content.encode()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    return snapshot
