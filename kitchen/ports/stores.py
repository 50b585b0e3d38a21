"""Data-side ports: datasets, blobs, the model hub and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable


@runtime_checkable
class DatasetStore(Protocol):
    def load(self, source: str, split: str | None = None, subset: str | None = None,
             prefer: tuple[str, ...] = ("train",)) -> Sequence[dict[str, Any]]:
        """Rows of a dataset: a local JSONL/JSON/CSV/Parquet file, a directory of shards, a
        ``save_to_disk`` directory, or a hub dataset name. ``split``/``subset`` pick a split
        and config where the source has them; with no ``split``, the first of ``prefer``
        that exists, else the only one. An unknown split is a DataError listing the splits.
        A ``Sequence`` (``len``, indexing, slicing) rather than a list, so a large source can read
        rows on access instead of holding them all in memory."""
        ...

    def fingerprint(self, source: str) -> str:
        """A content hash of ``source`` (file bytes, or a hub snapshot's commit): the token cache's key."""
        ...


@runtime_checkable
class StreamingDatasetStore(Protocol):
    """A DatasetStore that can also stream (``dataset_streaming=true``); a separate port so a
    store that only loads stays a complete DatasetStore."""

    def stream(self, source: str, split: str | None = None, subset: str | None = None,
               prefer: tuple[str, ...] = ("train",)) -> Any:
        """The same sources as ``load`` as an iterable of rows that is never materialised: a
        ``datasets.IterableDataset`` (its ``shuffle(seed=, buffer_size=)`` and ``set_epoch`` fix the order)."""
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
