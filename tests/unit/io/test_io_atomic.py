"""kitchen.io.atomic: what every writer in kitchen relies on (run.json, checkpoint records, serve state).

A reader sees the old contents or the new, never half; a failed write leaves the old file
and no temporary behind; a published directory replaces the old one whole.
"""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from kitchen.io.atomic import (
    atomic_open,
    atomic_path,
    atomic_publish_dir,
    atomic_write_json,
    atomic_write_text,
    temp_sibling,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"step": 3})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write('{"step": 4, "half')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"step": 3}
    assert _leftovers(tmp_path) == []


def test_atomic_path_hands_a_library_a_name_and_publishes_only_on_success(tmp_path):
    target = tmp_path / "weights.bin"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent and tmp.name.startswith(".")
        tmp.write_bytes(b"abc")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"abc"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("killed")
    assert target.read_bytes() == b"abc" and _leftovers(tmp_path) == []


def test_a_private_mode_is_set_before_the_file_appears(tmp_path):
    target = tmp_path / "secret.json"
    atomic_write_text(target, "{}", mode=0o600)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_atomic_open_refuses_append(tmp_path):
    with pytest.raises(ValueError, match="whole files"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_threads_writing_one_file_never_share_a_temporary(tmp_path):
    target = tmp_path / "run.json"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                atomic_write_json(target, {"writer": i, "pad": "x" * 2000})
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["writer"] in range(4)  # one writer's whole record
    assert _leftovers(tmp_path) == []


def test_publishing_a_directory_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "step_2"
    final.mkdir()
    (final / "old_only.txt").write_text("old")
    tmp = temp_sibling(final)
    tmp.mkdir()
    (tmp / "adapter.safetensors").write_bytes(b"new")
    atomic_publish_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["adapter.safetensors"]
    assert not tmp.exists() and _leftovers(tmp_path) == []
    # published trees get the modes a plain mkdir/open would have, not a temp dir's 0700
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o777 & ~mask


def test_publishing_without_replace_keeps_what_is_there(tmp_path):
    final = tmp_path / "tokenizer"
    final.mkdir()
    (final / "tokenizer.json").write_text("first")
    tmp = temp_sibling(final)
    tmp.mkdir()
    (tmp / "tokenizer.json").write_text("second")
    atomic_publish_dir(tmp, final, replace=False)
    assert (final / "tokenizer.json").read_text() == "first"
    assert not tmp.exists()
