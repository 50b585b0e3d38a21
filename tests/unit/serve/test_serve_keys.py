"""``kitchen serve --api-key-file`` (issue 23, item F): several keys, and each sees only what
it created. Another key's sessions, models, futures, runs, checkpoints and exports are a
404, the same answer as for something that does not exist.

The real noop server over loopback HTTP, with the tinker SDK for the owner's own work.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from kitchen.serve.testing import serve_subprocess

A, B = "tml-key-alice", "tml-key-bob"


def _post(url: str, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/{path}", json=body, headers={"X-API-Key": key}, timeout=30)


def _wait(url: str, key: str, r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    out = _post(url, key, "retrieve_future", {"request_id": r.json()["request_id"]})
    assert out.status_code == 200, out.text
    return out.json()


@pytest.fixture(scope="module")
def two_keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    keys = tmp / "keys.txt"
    keys.write_text(f"# two clients\n{A}\n\n{B}\n")
    with serve_subprocess(A, "noop", state_dir=str(tmp / "state"), extra_args=("--api-key-file", str(keys))) as srv:
        yield srv


def test_another_key_gets_404_for_everything_the_first_created(two_keys):
    url = two_keys.base_url
    sid = _post(url, A, "create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}).json()["session_id"]
    lora = {"rank": 4, "seed": 0, "train_mlp": True, "train_attn": True, "train_unembed": False}
    r = _post(url, A, "create_model", {"session_id": sid, "model_seq_id": 0, "base_model": "noop", "lora_config": lora})
    mid = _wait(url, A, r)["model_id"]
    ckpt = _wait(url, A, _post(url, A, "save_weights", {"model_id": mid, "path": "c1"}))["path"]
    export = _wait(url, A, _post(url, A, "save_weights_external", {"model_id": mid, "path": "e1"}))["path"]
    pending = _post(url, A, "save_weights", {"model_id": mid, "path": "c2"}).json()["request_id"]

    # Bob: 404 for each of Alice's things
    assert _post(url, B, "get_info", {"model_id": mid}).status_code == 404
    assert _post(url, B, "create_model", {"session_id": sid, "model_seq_id": 1, "base_model": "noop",
                                          "lora_config": lora}).status_code == 404
    assert _post(url, B, "save_weights", {"model_id": mid, "path": "steal"}).status_code == 404
    assert _post(url, B, "retrieve_future", {"request_id": pending}).status_code == 404
    assert _post(url, B, "weights_info", {"tinker_path": ckpt}).status_code == 404
    assert _post(url, B, "optim_step", {"model_id": mid, "adam_params": {"learning_rate": 1e-4}}).status_code == 404
    bob_sid = _post(url, B, "create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}).json()["session_id"]
    assert _post(url, B, "load_weights", {"path": ckpt, "session_id": bob_sid, "model_seq_id": 0}).status_code == 404
    hb = {"X-API-Key": B}
    run, name = export[len("tinker://"):].split("/external_weights/")
    assert httpx.get(f"{url}/api/v1/training_runs/{mid}", headers=hb).status_code == 404
    assert httpx.get(f"{url}/api/v1/training_runs/{run}/checkpoints/external_weights/{name}/external_weights_urls",
                     headers=hb).status_code == 404
    assert httpx.delete(f"{url}/api/v1/training_runs/{mid}/checkpoints/weights/c1", headers=hb).status_code == 404
    assert httpx.get(f"{url}/api/v1/training_runs", headers=hb).json()["cursor"]["total_count"] == 0
    assert httpx.post(f"{url}/api/v1/sessions/{sid}/finish", json={}, headers=hb).status_code == 404

    # Alice: all of it is still hers
    assert _post(url, A, "get_info", {"model_id": mid}).status_code == 200
    assert _post(url, A, "retrieve_future", {"request_id": pending}).status_code == 200
    runs = httpx.get(f"{url}/api/v1/training_runs", headers={"X-API-Key": A}).json()["training_runs"]
    assert [r["training_run_id"] for r in runs] == [mid]
    assert _post(url, A, "weights_info", {"tinker_path": ckpt}).status_code == 200


def test_bad_key_files_exit_2(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    for path, needle in ((empty, "no keys"), (tmp_path / "missing.txt", "cannot be read")):
        p = subprocess.run([sys.executable, "-m", "kitchen.serve", "--backend", "noop", "--port", "0", "--state-dir",
                            str(tmp_path / "s"), "--api-key-file", str(path)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "--api-key-file" in p.stderr and needle in p.stderr, p.stderr
