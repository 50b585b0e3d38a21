"""The kinds of local data file the dataset store reads, told apart by name.

Shared by the whole-file loader (:mod:`.store`) and the streaming one (:mod:`.streaming`),
so both accept the same extensions and treat a source string as a path the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

JSONL_EXTS = (".jsonl", ".jsonl.gz", ".ndjson")
JSON_EXTS = (".json",)
CSV_EXTS = (".csv", ".tsv")
PARQUET_EXTS = (".parquet", ".pq")
ALL_EXTS = JSONL_EXTS + JSON_EXTS + CSV_EXTS + PARQUET_EXTS
ALLOWED = ".jsonl, .json, .csv, .tsv or .parquet"


def file_ext(path: Path) -> str:
    name = path.name.lower()
    for ext in ALL_EXTS:
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def looks_like_path(source: str) -> bool:
    if source.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(source):
        return True
    if "\\" in source:
        return True
    return any(source.lower().endswith(ext) for ext in ALL_EXTS)


def file_kind(path: Path) -> str:
    ext = file_ext(path)
    return "jsonl" if ext in JSONL_EXTS else "json" if ext in JSON_EXTS else "csv" if ext == ".csv" else "tsv" if ext == ".tsv" else "parquet"


__all__ = ["ALLOWED", "ALL_EXTS", "CSV_EXTS", "JSONL_EXTS", "JSON_EXTS", "PARQUET_EXTS", "file_ext", "file_kind",
           "looks_like_path"]
