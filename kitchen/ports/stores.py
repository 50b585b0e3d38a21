"""Data-side ports: datasets, blobs, the model hub, metrics, embeddings and vectors."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable


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
    def put(self, key: str, data: bytes) -> str: ...

    def get(self, key: str) -> bytes: ...

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


@runtime_checkable
class EmbeddingClient(Protocol):
    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@runtime_checkable
class VectorStore(Protocol):
    def add(self, ids: Sequence[str], vectors: Sequence[Sequence[float]], payloads: Iterable[dict] | None = None) -> None: ...

    def query(self, vector: Sequence[float], k: int = 5) -> list[tuple[str, float]]: ...
