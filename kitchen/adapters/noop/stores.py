"""In-memory stand-ins for the data-side ports."""

from __future__ import annotations

from typing import Any, Mapping

from kitchen.ports.stores import HubSnapshot


class NoopBlobStore:
    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> str:
        self._blobs[key] = bytes(data)
        return key

    def put_file(self, local_path: str, key: str) -> str:
        with open(local_path, "rb") as fh:
            return self.put(key, fh.read())

    def get(self, key: str) -> bytes:
        return self._blobs[key]

    def get_file(self, key: str, local_path: str) -> None:
        with open(local_path, "wb") as fh:
            fh.write(self._blobs[key])

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
