"""Data-side ports: datasets, blobs, the model hub, metrics, embeddings and vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable


@runtime_checkable
class DatasetStore(Protocol):
    def load(self, source: str, split: str | None = None) -> list[dict[str, Any]]:
        """Rows of a dataset (local JSONL/JSON/CSV/Parquet file or a cached hub name)."""
        ...


@runtime_checkable
class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> str: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...


@dataclass(frozen=True)
class HubSnapshot:
    """A model repo revision as it sits (or will sit) in the local cache."""

    repo_id: str
    revision: str | None  # what was asked for (None = the default branch)
    commit: str | None  # the resolved commit (40 hex), when known
    path: str | None  # the local snapshot directory, when cached or downloaded


@runtime_checkable
class HubClient(Protocol):
    """A model hub: look in the local cache, ask the hub, download, upload."""

    def cached(self, repo_id: str, revision: str | None = None) -> HubSnapshot | None:
        """The cached snapshot of ``repo_id@revision``, or None; never touches the network."""
        ...

    def remote(self, repo_id: str, revision: str | None = None) -> HubSnapshot:
        """Which commit ``revision`` is on the hub (metadata only, no weights)."""
        ...

    def download(self, repo_id: str, revision: str | None = None) -> HubSnapshot:
        """Fetch ``repo_id@revision`` into the cache when online; the cached copy offline."""
        ...

    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        """A local directory holding ``repo_id@revision`` (``download(...).path``)."""
        ...

    def upload(self, local_dir: str, repo_id: str) -> str:
        """Create ``repo_id`` if needed, upload ``local_dir``; returns where it went."""
        ...


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
