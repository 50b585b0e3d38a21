"""In-memory stand-ins for the data-side ports."""

from __future__ import annotations

import hashlib
import math
from typing import Any, Iterable, Mapping, Sequence

from kitchen.ports.stores import HubSnapshot


class NoopBlobStore:
    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> str:
        self._blobs[key] = bytes(data)
        return key

    def get(self, key: str) -> bytes:
        return self._blobs[key]

    def exists(self, key: str) -> bool:
        return key in self._blobs

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._blobs if k.startswith(prefix))


class NoopHubClient:
    """Resolves nothing remotely: a repo id is returned as if it were a local path."""

    def cached(self, repo_id: str, revision: str | None = None) -> HubSnapshot | None:
        return HubSnapshot(repo_id, revision, None, repo_id)

    def remote(self, repo_id: str, revision: str | None = None) -> HubSnapshot:
        return HubSnapshot(repo_id, revision, None, None)

    def download(self, repo_id: str, revision: str | None = None) -> HubSnapshot:
        return HubSnapshot(repo_id, revision, None, repo_id)

    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        return repo_id

    def upload(self, local_dir: str, repo_id: str) -> str:
        return f"noop://{repo_id}"


class NoopMetricsStore:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, step: int, metrics: Mapping[str, float]) -> None:
        self.rows.append({"step": step, **metrics})

    def read(self) -> list[dict[str, Any]]:
        return list(self.rows)

    def close(self) -> None:
        pass


class NoopEmbeddingClient:
    """Hash-based unit vectors: equal texts embed equally, different texts rarely collide."""

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            vec = [(digest[i % len(digest)] - 127.5) for i in range(self.dim)]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out


class NoopVectorStore:
    """Brute-force cosine search in memory."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[list[float], dict]] = {}

    def add(self, ids: Sequence[str], vectors: Sequence[Sequence[float]], payloads: Iterable[dict] | None = None) -> None:
        payload_list = list(payloads) if payloads is not None else [{} for _ in ids]
        for key, vec, payload in zip(ids, vectors, payload_list):
            self._items[key] = (list(vec), payload)

    def query(self, vector: Sequence[float], k: int = 5) -> list[tuple[str, float]]:
        def cosine(a: Sequence[float], b: Sequence[float]) -> float:
            dot = sum(x * y for x, y in zip(a, b))
            na = math.sqrt(sum(x * x for x in a)) or 1.0
            nb = math.sqrt(sum(y * y for y in b)) or 1.0
            return dot / (na * nb)

        scored = [(key, cosine(vector, vec)) for key, (vec, _) in self._items.items()]
        return sorted(scored, key=lambda kv: kv[1], reverse=True)[:k]
