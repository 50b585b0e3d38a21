"""External weights of ``kitchen serve``: ``save_weights_external`` and its download URLs.

A client downloads trained weights the way the Tinker SDK 0.38 and tinker-cookbook's
``weights.download`` do it against the hosted service:

1. ``TrainingClient.save_weights_external(name)`` exports the session's weights in a
   format other tools load (``tinker://RUN/external_weights/NAME``). Here that is the
   port's ``save_weights`` output: for a LoRA session its PEFT adapter
   (``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
   ``PeftModel.from_pretrained`` over the base model), otherwise the whole
   transformers model dir. With ``age_encryption_recipients`` every file is
   age-encrypted to them (``.age`` suffix), as the cookbook asks when it downloads a
   training checkpoint.
2. ``RestClient.get_external_weights_urls(path)`` returns one URL per file.
3. The client fetches each URL with plain ``urllib``: no API key header. So a URL
   carries its own authorisation, an HMAC over (run, name, file, expiry, the export's
   id and content hash) keyed by a random secret of the state dir
   (:func:`kitchen.serve.private_files.signing_secret`; it used to be derived from the
   API key). It is valid until it expires, names one file of one export (re-saving
   under the same name makes a new export, and old URLs stop working), and reveals
   nothing about the key; the host it names is ``--public-url`` (default the bind
   address), never the request's ``Host`` header, which a client sets. The access log
   records the path and never the query string that holds the signature.

Exports live under ``--state-dir`` (``runs/<run>/external_weights/<name>/`` with a
``<name>.kitchen.json`` beside it), honour their TTL (expired ones are removed when next
looked at), and are listed and deleted like any other checkpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kitchen.io.atomic import atomic_publish_dir, atomic_write_json
from kitchen.serve.errors import RequestError, check_checkpoint_name, safe_name

EXTERNAL_PATH = re.compile(r"tinker://([^/]+)/external_weights/([^/]+)")
# Where the signed file URLs live (outside the API-key check; see module docstring).
FILES_PREFIX = "/api/v1/external_weights_files/"
URL_LIFETIME_S = 3600
MAX_TTL_S = 10 * 365 * 24 * 3600
AGE_SUFFIX = ".age"
_SIGNING_CONTEXT = b"kitchen serve: external weights download URLs"


def _content_hash(folder: Path, files: list[str]) -> str:
    """sha256 over the export's files (names and contents), to bind its URLs to what they download."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0")
        with open(folder / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(float(ts), tz=dt.timezone.utc).isoformat()


def check_ttl(ttl_seconds: Any) -> float | None:
    """Seconds until expiry, or None (never); a 400 for anything but 1 s - 10 years."""
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not 1 <= ttl_seconds <= MAX_TTL_S:
        raise RequestError(400, f"ttl_seconds must be a whole number of seconds from 1 to {MAX_TTL_S} (10 years), "
                                f"or null for no expiry; got {ttl_seconds!r}")
    return float(ttl_seconds)


def parse_external_path(path: str) -> tuple[str, str]:
    m = EXTERNAL_PATH.fullmatch(path or "")
    if not m:
        raise RequestError(400, f"not an external weights path: {path!r} (expected tinker://RUN/external_weights/NAME)")
    check_checkpoint_name(m.group(2), "external weights name")
    return m.group(1), m.group(2)


def age_recipients(recipients: list[str]) -> list[Any]:
    try:
        import pyrage
    except ImportError:
        raise RequestError(400, "age_encryption_recipients needs the pyrage package on the server "
                                "(pip install 'crucible-kitchen[cookbook]' or pip install pyrage); "
                                "or export without encryption") from None
    if not recipients or len(recipients) > 10:
        raise RequestError(400, f"age_encryption_recipients takes 1-10 recipients, got {len(recipients)}")
    out = []
    for r in recipients:
        try:
            out.append(pyrage.ssh.Recipient.from_str(r) if r.startswith("ssh-") else pyrage.x25519.Recipient.from_str(r))
        except Exception:  # noqa: BLE001 - a bad recipient is the client's 400
            raise RequestError(400, f"age recipient {r[:24]!r}... is neither an age1... key nor an SSH public key") from None
    return out


class ExternalWeights:
    """Exports on disk plus the signing of their download URLs."""

    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self._signing_key = hmac.new(secret, _SIGNING_CONTEXT, hashlib.sha256).digest()
        self._lock = threading.RLock()

    def __repr__(self) -> str:  # never show the signing key
        return f"ExternalWeights(root={str(self.root)!r})"

    # ---- layout ---------------------------------------------------------------------
    def _base(self, run_id: str) -> Path:
        return self.root / "runs" / safe_name(run_id) / "external_weights"

    def folder(self, run_id: str, name: str) -> Path:
        return self._base(run_id) / name

    def _meta_file(self, run_id: str, name: str) -> Path:
        return self._base(run_id) / f"{name}.kitchen.json"

    def meta(self, run_id: str, name: str) -> dict[str, Any] | None:
        """The export's metadata, or None when it does not exist or has expired (then it is removed)."""
        try:
            meta = json.loads(self._meta_file(run_id, name).read_text())
        except (OSError, ValueError):
            return None
        if meta.get("expires_at") is not None and time.time() >= float(meta["expires_at"]):
            self.delete(run_id, name)
            return None
        return meta

    def require(self, run_id: str, name: str) -> dict[str, Any]:
        meta = self.meta(run_id, name)
        if meta is None:
            raise RequestError(404, f"external weights tinker://{run_id}/external_weights/{name} not found on this server "
                                    "(never saved, deleted, or past its TTL)")
        return meta

    # ---- export (runs on the model's worker thread) -----------------------------------
    def export(self, worker: Any, name: str, *, ttl_s: float | None, recipients: list[Any] | None) -> dict[str, Any]:
        base = self._base(worker.model_id)
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=base))
        try:
            weights = Path(worker.client.save_weights(str(work / "weights")))
            adapter = weights / "adapter"
            if worker.lora.rank > 0 and (adapter / "adapter_config.json").is_file():
                picked = adapter
            else:
                shutil.rmtree(adapter, ignore_errors=True)
                picked = weights
            for leftover in picked.glob(".*"):
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
            files = sorted(p.relative_to(picked).as_posix() for p in picked.rglob("*") if p.is_file())
            if recipients:
                import pyrage

                for rel in files:
                    plain = picked / rel
                    pyrage.encrypt_file(str(plain), str(plain) + AGE_SUFFIX, recipients)
                    plain.unlink()
                files = [rel + AGE_SUFFIX for rel in files]
            now = time.time()
            meta = {
                "tinker_path": f"tinker://{worker.model_id}/external_weights/{name}", "run_id": worker.model_id,
                "name": name, "base_model": worker.base_model, "lora": {"rank": worker.lora.rank,
                "train_mlp": worker.lora.train_mlp, "train_attn": worker.lora.train_attn,
                "train_unembed": worker.lora.train_unembed}, "step": worker.steps, "created": now,
                "expires_at": None if ttl_s is None else now + ttl_s, "encrypted": bool(recipients), "files": files,
                "size_bytes": sum((picked / rel).stat().st_size for rel in files),
                "format": "peft_adapter" if picked == adapter else "weights_dir",
                "export_id": secrets.token_hex(8), "content_sha256": _content_hash(picked, files),
            }
            with self._lock:
                target = self.folder(worker.model_id, name)
                self._meta_file(worker.model_id, name).unlink(missing_ok=True)
                atomic_publish_dir(picked, target)
                atomic_write_json(self._meta_file(worker.model_id, name), meta)
            return meta
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ---- listing / deleting / TTL ------------------------------------------------------
    def list_for(self, run_id: str) -> list[dict[str, Any]]:
        out = []
        for f in sorted(self._base(run_id).glob("*.kitchen.json")):
            meta = self.meta(run_id, f.name[: -len(".kitchen.json")])
            if meta is not None:
                out.append(meta)
        return out

    def delete(self, run_id: str, name: str) -> bool:
        with self._lock:
            mf = self._meta_file(run_id, name)
            found = mf.exists()
            mf.unlink(missing_ok=True)
            shutil.rmtree(self.folder(run_id, name), ignore_errors=True)
        return found

    def set_ttl(self, run_id: str, name: str, ttl_seconds: Any) -> None:
        ttl_s = check_ttl(ttl_seconds)
        with self._lock:
            meta = self.require(run_id, name)
            meta["expires_at"] = None if ttl_s is None else time.time() + ttl_s
            atomic_write_json(self._meta_file(run_id, name), meta)

    # ---- signed download URLs ------------------------------------------------------------
    def _signature(self, run_id: str, name: str, rel: str, expires: int, meta: dict[str, Any]) -> str:
        binding = (str(meta.get("export_id", "")), str(meta.get("content_sha256", "")))
        msg = "\n".join((run_id, name, rel, str(expires), *binding)).encode()
        return hmac.new(self._signing_key, msg, hashlib.sha256).hexdigest()

    def urls(self, run_id: str, name: str, base_url: str) -> dict[str, Any]:
        """``ExternalWeightsUrlsResponse``: one signed URL per file, all expiring together."""
        meta = self.require(run_id, name)
        expires = int(time.time()) + URL_LIFETIME_S
        if meta.get("expires_at") is not None:
            expires = min(expires, int(float(meta["expires_at"])))
        root = base_url.rstrip("/") + FILES_PREFIX + quote(run_id, safe=":") + "/" + quote(name) + "/"
        urls = {rel: f"{root}{quote(rel)}?expires={expires}&signature={self._signature(run_id, name, rel, expires, meta)}"
                for rel in meta["files"]}
        return {"urls": urls, "expires": _iso(expires)}

    def file_for(self, path: str, query: dict[str, str]) -> Path:
        """The file a signed URL names, after checking its signature and expiry (403/404 otherwise)."""
        parts = path[len(FILES_PREFIX):].split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise RequestError(404, "no such external weights file URL; get fresh URLs with get_external_weights_urls")
        run_id, name, rel = parts
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            raise RequestError(403, "download URL is not signed; get one from get_external_weights_urls") from None
        given = query.get("signature", "")
        meta = self.require(run_id, name)
        if not hmac.compare_digest(given.encode(), self._signature(run_id, name, rel, expires, meta).encode()):
            raise RequestError(403, "download URL signature does not match (altered, signed by another server, or for an "
                                    "export since re-saved or deleted); get fresh URLs with get_external_weights_urls")
        if time.time() >= expires:
            raise RequestError(403, "download URL has expired; get fresh URLs with get_external_weights_urls")
        if rel not in meta.get("files", []):
            raise RequestError(404, f"{rel!r} is not a file of tinker://{run_id}/external_weights/{name}")
        return self.folder(run_id, name) / rel
