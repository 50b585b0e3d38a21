"""Row checks: every row has what its workflow trains on, or a DataError names the first bad one.

Used by the data stage on loaded splits and by the streaming path on a stream's first
rows, so a file is judged the same way however it is read.
"""

from __future__ import annotations

from typing import Any


def check_rows(rows: list[dict[str, Any]], kind: str, source: str, train_on_what: str) -> None:
    """Every row must have what its workflow trains on; the first bad row is a DataError naming it."""
    from kitchen.train.datum import check_preference_row, check_sft_row

    for i, row in enumerate(rows):
        if kind == "preference":
            check_preference_row(row, i, source)
        elif kind == "unpaired":  # normalised to weighted messages + label: the completion is what trains
            check_sft_row(row, i, source, "last_assistant_message")
        else:
            check_sft_row(row, i, source, train_on_what)


__all__ = ["check_rows"]
