"""``kitchen serve``'s secrets and files (issue 23, items C and D): a generated API key goes
to a 0600 file (the log names the file, never the key), the state dir is 0700, and signed
download URLs use a random per-state-dir secret, name ``--public-url`` (never the request's
Host header), and stop working when their export is re-saved.

The real noop server over loopback HTTP with the tinker SDK's RestClient.
"""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request

import httpx

from conftest import SERVE_KEY as KEY
from kitchen.serve.private_files import API_KEY_FILE, SIGNING_SECRET_FILE
from kitchen.serve.testing import serve_subprocess

H = {"X-API-Key": KEY}


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_generated_key_is_written_0600_and_not_logged(tmp_path, monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    state = tmp_path / "fresh" / "state"
    with serve_subprocess("", "noop", state_dir=str(state)) as srv:
        key_file = state / API_KEY_FILE
        key = key_file.read_text().strip()
        assert key.startswith("tml-kitchen-") and _mode(key_file) == 0o600
        assert _mode(state) == 0o700 and _mode(state / SIGNING_SECRET_FILE) == 0o600
        log = srv.log()
        assert str(key_file) in log and key not in log
        assert httpx.get(f"{srv.base_url}/api/v1/healthz", headers={"X-API-Key": key}).status_code == 200


def _export(url: str, name: str) -> tuple[str, str]:
    sid = httpx.post(f"{url}/api/v1/create_session", json={"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"},
                     headers=H).json()["session_id"]
    r = httpx.post(f"{url}/api/v1/create_model", headers=H, json={
        "session_id": sid, "model_seq_id": 0, "base_model": "noop",
        "lora_config": {"rank": 4, "seed": 0, "train_mlp": True, "train_attn": True, "train_unembed": False}})
    model_id = r.json()["model_id"]
    httpx.post(f"{url}/api/v1/retrieve_future", json={"request_id": r.json()["request_id"]}, headers=H, timeout=30)
    return model_id, _save(url, model_id, name)


def _save(url: str, model_id: str, name: str) -> str:
    r = httpx.post(f"{url}/api/v1/save_weights_external", json={"model_id": model_id, "path": name}, headers=H)
    out = httpx.post(f"{url}/api/v1/retrieve_future", json={"request_id": r.json()["request_id"]}, headers=H, timeout=30)
    return out.json()["path"]


def _urls(url: str, path: str, host: str | None = None) -> dict[str, str]:
    run, _, name = path[len("tinker://"):].rpartition("/external_weights/")
    headers = {**H, "Host": host} if host else H
    r = httpx.get(f"{url}/api/v1/training_runs/{run}/checkpoints/external_weights/{name}/external_weights_urls",
                  headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["urls"]


def _status(url: str) -> int:
    try:
        return urllib.request.urlopen(url).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_signed_urls_use_the_state_dirs_secret_the_public_url_and_the_exports_content(tmp_path):
    state = tmp_path / "state"
    with serve_subprocess(KEY, "noop", state_dir=str(state)) as srv:
        model_id, path = _export(srv.base_url, "final")
        urls = _urls(srv.base_url, path, host="evil.example:666")
        assert all(u.startswith(srv.base_url + "/") for u in urls.values()), urls  # the bind address, not Host
        assert all(_status(u) == 200 for u in urls.values())
        secret = (state / SIGNING_SECRET_FILE).read_bytes()
        assert len(secret) == 32 and KEY.encode() not in secret
        kept = _save(srv.base_url, model_id, "kept")
        kept_urls = _urls(srv.base_url, kept)
        _save(srv.base_url, model_id, "final")  # re-saved under the same name: a new export
        assert all(_status(u) == 403 for u in urls.values())
        assert all(_status(u) == 200 for u in _urls(srv.base_url, path).values())
    with serve_subprocess(KEY, "noop", state_dir=str(state),
                          extra_args=("--public-url", "https://weights.example.org/kitchen/")) as srv:
        assert (state / SIGNING_SECRET_FILE).read_bytes() == secret  # reused after the restart
        moved = {rel: u.replace(u.split("/api/v1/")[0], srv.base_url) for rel, u in kept_urls.items()}
        assert all(_status(u) == 200 for u in moved.values())  # URLs handed out before the restart still work
        fresh = _urls(srv.base_url, kept)
        assert all(u.startswith("https://weights.example.org/kitchen/api/v1/external_weights_files/") for u in fresh.values())
