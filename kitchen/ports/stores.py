"""Data-side ports: datasets, blobs, the model hub and metrics."""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class DatasetStore(Protocol):
    def load(self, source: str, split: str | None = None, subset: str | None = None,
             prefer: tuple[str, ...] = ("train",)) -> list[dict[str, Any]]:
        """Rows of a dataset: a local JSONL/JSON/CSV/Parquet file, a directory of shards, a
        ``save_to_disk`` directory, or a hub dataset name. ``split``/``subset`` pick a split
        and config where the source has them; with no ``split``, the first of ``prefer``
        that exists, else the only one. An unknown split is a DataError listing the splits."""
        ...

    def fingerprint(self, source: str) -> str:
        """A content hash of ``source`` (file bytes, or a hub snapshot's commit): the token cache's key."""
        ...


@runtime_checkable
class BlobStore(Protocol):
    """Where copies of checkpoints and artifacts go (a folder, a bucket). Keys are ``/`` paths."""

    def put(self, key: str, data: bytes) -> str: ...

    def put_file(self, local_path: str, key: str) -> str:
        """Copy a local file to ``key`` (atomically where the store allows); returns its URL."""
        ...

    def get(self, key: str) -> bytes: ...

    def get_file(self, key: str, local_path: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...


@runtime_checkable
class HubClient(Protocol):
    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        """A local directory holding ``repo_id`` (from the cache; never downloads offline)."""
        ...

    def upload(self, local_dir: str, repo_id: str) -> str: ...


@runtime_checkable
class MetricsStore(Protocol):
    def record(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def read(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...
