"""Files only the server's user may read: the state dir (0700), the generated API key and
the URL-signing secret (0600).

Why: the state dir holds checkpoints, a generated API key and the secret that signs
download URLs; created with the default umask (typically 0755/0644) any local user
could read them, and with the key, drive the server. Files are created with their mode
from the start (``os.open`` with 0600 and ``O_EXCL``), never written world-readable and
narrowed afterwards.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SIGNING_SECRET_FILE = "url-signing.secret"
API_KEY_FILE = "api-key"


def make_private_dir(path: Path) -> None:
    """Create ``path`` as 0700 (its missing parents with the usual mode). A folder that
    already exists keeps its mode: the operator chose it."""
    path = Path(path)
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; 0700 is what we mean


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file at ``path`` (replacing one there) without a moment of wider access."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def signing_secret(state_dir: Path) -> bytes:
    """The state dir's URL-signing secret: 32 random bytes made on first start, reused after a restart.

    It is independent of the API key, so a signed URL reveals nothing about the key, and
    URLs handed out stay valid across restarts on the same state dir (and on no other).
    """
    path = Path(state_dir) / SIGNING_SECRET_FILE
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    write_private(path, secret)
    return secret
