"""Test helpers for hub models: a tiny model in huggingface_hub's own cache layout, and a
loopback HTTP server that answers the few Hub endpoints ``snapshot_download`` uses.

The cache layout is huggingface_hub's (``models--org--name/blobs/<hash>``,
``snapshots/<commit>/<file>`` symlinks, ``refs/<revision>``), so the code under test
reads it with huggingface_hub itself, exactly as it would read a real download.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SHA_MAIN = "1" * 40
SHA_V2 = "2" * 40


def save_tiny_model(path: Path, *, dtype: str = "bfloat16", perturb: float = 0.0) -> Path:
    """The tiny test model saved as a plain transformers dir (config, safetensors, tokenizer)."""
    import torch

    from kitchen.adapters.local.tiny import build_tiny

    model, tok = build_tiny()
    if perturb:
        with torch.no_grad():
            model.model.embed_tokens.weight.add_(perturb)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def files_of(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}


def populate_cache(hf_home: Path, repo_id: str, revisions: dict[str, tuple[str, dict[str, bytes]]]) -> Path:
    """Write ``repo_id`` into ``hf_home/hub`` for each ``ref -> (commit, files)``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    for ref, (commit, files) in revisions.items():
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snap / name
            if not link.exists():
                os.symlink(os.path.relpath(blob, snap), link)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


class FakeHub:
    """Serves ``repo_id -> {ref: (commit, files)}`` over the Hub's download endpoints."""

    def __init__(self, repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]]) -> None:
        self.repos = repos
        self.requests: list[str] = []
        self.uploads: dict[str, dict[str, bytes]] = {}  # repo_id -> path -> bytes, from upload_folder

    def _lookup(self, repo_id: str, rev: str):
        revs = self.repos.get(repo_id)
        if revs is None:
            return None
        for ref, (commit, files) in revs.items():
            if rev in (ref, commit):
                return commit, files
        return None

    def handler(self):
        hub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, body=b"", headers=None, head=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, code=200):
                self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _route(self, head=False):
                path = self.path.split("?", 1)[0]
                hub.requests.append(f"{self.command} {path}")
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) == 4:
                    parts += ["revision", "main"]  # model_info without a revision: the default branch
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    repo_id, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
                    found = hub._lookup(repo_id, rev)
                    if found is None:
                        code = 404
                        err = "Revision Not Found" if repo_id in hub.repos else "Repository Not Found"
                        return self._send(code, json.dumps({"error": err}).encode(),
                                          {"X-Error-Code": "RevisionNotFound" if repo_id in hub.repos else "RepoNotFound",
                                           "X-Error-Message": err, "Content-Type": "application/json"})
                    commit, files = found
                    if kind == "revision":
                        return self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                           "siblings": [{"rfilename": n} for n in files]})
                    return self._json([{"type": "file", "oid": hashlib.sha1(d).hexdigest(), "size": len(d), "path": n}
                                       for n, d in files.items()])
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    found = hub._lookup(repo_id, rev)
                    if found is None or name not in found[1]:
                        return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}, head)
                    commit, files = found
                    data = files[name]
                    return self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                                                  "Content-Length": str(len(data))}, head)
                return self._send(404, b"not found", head=head)

            def do_POST(self):
                """create_repo, preupload and commit: enough for ``upload_folder`` without hf_xet."""
                import base64

                path = self.path.split("?", 1)[0]
                hub.requests.append(f"POST {path}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req.get('organization')}/{req['name']}" if req.get("organization") else req["name"]
                    hub.uploads.setdefault(repo_id, {})
                    return self._json({"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":  # the model card's metadata check
                    return self._json({"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                 for f in files]})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "commit":
                    repo_id = "/".join(parts[2:4])
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            v = item["value"]
                            hub.uploads.setdefault(repo_id, {})[v["path"]] = base64.b64decode(v["content"])
                    oid = "3" * 40
                    return self._json({"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}",
                                       "commitOid": oid, "success": True})
                return self._send(404, b"not found")

            def do_GET(self):
                self._route()

            def do_HEAD(self):
                self._route(head=True)

        return H


@contextmanager
def serve_fake_hub(hub: FakeHub):
    server = ThreadingHTTPServer(("127.0.0.1", 0), hub.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
