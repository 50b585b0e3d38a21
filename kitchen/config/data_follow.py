"""The test set follows the data: ``dataset=`` on the command line drops the recipe's test set.

A recipe ships its train and test files together (sl_basic: ``chat_sft/train.jsonl`` and
``chat_sft/test.jsonl``). A user who points ``dataset=`` at their own file means their
data, and the recipe's test set then measures something else - or fails outright, when
``dataset_columns`` mapped for the new file is applied to the shipped one. So when the
overrides set ``dataset`` and say nothing about ``test_dataset``, the composed
``test_dataset`` (and its split/subset/columns) is dropped, with one line saying so;
``test_split_fraction`` still carves a test set off the new data when set.
"""

from __future__ import annotations

from typing import Any, Iterable

TEST_KEYS = ("test_dataset", "test_dataset_split", "test_dataset_subset")


def _keys(overrides: Iterable[str]) -> set[str]:
    keys = set()
    for item in overrides:
        key = str(item).split("=", 1)[0].strip()
        keys.add(key.removeprefix("override ").lstrip("+~").split(".")[0])
    return keys


def follow_dataset(overrides: Iterable[str], data: dict[str, Any]) -> str | None:
    """Drop the recipe's test set from ``data`` when ``overrides`` replace only the train data.

    Returns the one-line note to show, or None when nothing changed."""
    overrides = [str(o) for o in overrides]
    keys = _keys(overrides)
    replaced = any(str(o).split("=", 1)[0].strip().lstrip("+").removeprefix("override ") == "dataset" and "=" in o
                   for o in overrides)
    if not replaced or "test_dataset" in keys or not data.get("test_dataset"):
        return None
    dropped = data["test_dataset"]
    for key in TEST_KEYS:
        if key in data and key not in keys:
            data[key] = None
    fraction = float(data.get("test_split_fraction") or 0.0)
    instead = (f"carving test_split_fraction={fraction:g} off the new data instead" if fraction else
               "no test set (pass test_dataset=FILE, or test_split_fraction=0.05 to carve one off)")
    return f"dataset= was overridden, so the recipe's test set ({dropped}) is not used: {instead}."


_PENDING: list[str] = []


def remember(note: str | None) -> None:
    """Hold the note until preflight passes, so an error stays the only paragraph on stderr."""
    _PENDING.clear()
    if note:
        _PENDING.append(note)


def announce() -> None:
    """Show the held note once (stderr, or the CLI's warning sink)."""
    from kitchen.config.catalog import warn_once

    while _PENDING:
        warn_once(_PENDING.pop())
