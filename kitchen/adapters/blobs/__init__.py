"""BlobStore adapters: a local folder, or any fsspec URL (s3://, gs://, az://, memory://...).

Kitchen writes checkpoints and final weights into the run directory first (atomically,
with a sha256 manifest); a BlobStore is where copies of them go, e.g. a bucket that
outlives the machine (``checkpoint_mirror=s3://bucket/runs/x``). Keys are ``/``-separated
paths below the store's root. Remote protocols need their fsspec backend installed
(``s3fs``, ``gcsfs``, ``adlfs``); a missing one is a clear error naming it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kitchen.errors import ConfigError
from kitchen.io.atomic import atomic_open


class LocalBlobStore:
    """Blobs as files below ``root``; every write lands atomically (temp file, fsync, rename)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key.lstrip("/")).resolve()
        if self.root.resolve() not in (path, *path.parents):
            raise ValueError(f"blob key {key!r} points outside {self.root}")
        return path

    def _write(self, key: str, fill: Any) -> str:
        dest = self._path(key)
        with atomic_open(dest, "wb") as fh:
            fill(fh)
        return str(dest)

    def put(self, key: str, data: bytes) -> str:
        return self._write(key, lambda fh: fh.write(data))

    def put_file(self, local_path: str | os.PathLike[str], key: str) -> str:
        with open(local_path, "rb") as src:
            return self._write(key, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def get_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), local_path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file() and ".tmp-" not in p.name)
        return sorted(k for k in keys if k.startswith(prefix))


class FsspecBlobStore:
    """Blobs below an fsspec URL. Uploads go to a temporary key first, then are moved into place."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        try:
            import fsspec
        except ImportError:  # pragma: no cover - datasets depends on fsspec
            raise ConfigError("Remote blob stores need the 'fsspec' package: pip install fsspec.") from None
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        except (ImportError, ValueError) as exc:
            raise _missing_backend(url, exc) from None

    def _key(self, key: str) -> str:
        return f"{self.root}/{key.lstrip('/')}"

    def put(self, key: str, data: bytes) -> str:
        tmp = self._key(key) + ".tmp-upload"
        self.fs.pipe_file(tmp, bytes(data))
        self.fs.mv(tmp, self._key(key))
        return f"{self.url}/{key.lstrip('/')}"

    def put_file(self, local_path: str | os.PathLike[str], key: str) -> str:
        tmp = self._key(key) + ".tmp-upload"
        self.fs.put_file(str(local_path), tmp)
        self.fs.mv(tmp, self._key(key))
        return f"{self.url}/{key.lstrip('/')}"

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._key(key))

    def get_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self._key(key), str(local_path))

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._key(key)))

    def list(self, prefix: str = "") -> list[str]:
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        keys = (p[len(root):] if p.startswith(root) else p for p in found)
        return sorted(k for k in keys if k.startswith(prefix) and not k.endswith(".tmp-upload"))


def _missing_backend(url: str, exc: BaseException) -> ConfigError:
    protocol = url.split("://", 1)[0]
    return ConfigError(
        f"Cannot open the blob store {redact_url(url)}: {exc}. Remote URLs need the fsspec backend of their "
        f"protocol installed (s3:// -> s3fs, gs:// -> gcsfs, az:// -> adlfs); '{protocol}' is not available here."
    )


def check_remote_url(url: str) -> None:
    """Refuse a remote URL whose fsspec protocol is unknown or not installed, without connecting."""
    import fsspec

    try:
        fsspec.get_filesystem_class(url.split("://", 1)[0])
    except (ImportError, ValueError) as exc:
        raise _missing_backend(url, exc) from None


def open_blob_store(url: str) -> LocalBlobStore | FsspecBlobStore:
    """A local folder for a plain path or ``file://`` URL, fsspec for any other scheme."""
    if "://" not in url:
        return LocalBlobStore(url)
    if url.startswith("file://"):
        return LocalBlobStore(url[len("file://"):])
    return FsspecBlobStore(url)


def put_tree(store: Any, local_dir: str | os.PathLike[str], prefix: str) -> list[str]:
    """Copy every file below ``local_dir`` to ``prefix/<relative path>``; returns the keys."""
    local_dir = Path(local_dir)
    keys = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
        store.put_file(path, key)
        keys.append(key)
    return keys


def redact_url(url: str) -> str:
    """``url`` without userinfo or query string (credentials never reach a message)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
