"""Downloading trained weights from ``kitchen serve`` the way the Tinker SDK does it.

``save_weights_external`` exports a session, ``get_external_weights_urls`` signs one URL
per file, and a plain HTTP GET (no key) fetches each; the tinker CLI's
``checkpoint download`` does all of it for a training checkpoint. Real server
subprocesses on the tiny local model; the real tinker SDK and CLI over HTTP; the
downloaded adapter is loaded with plain peft.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import SERVE_KEY as KEY
from kitchen.serve.testing import serve_subprocess

TOKENS = list(range(5, 25))


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_subprocess(KEY, "local", log_level="INFO", state_dir=str(tmp_path_factory.mktemp("state"))) as srv:
        yield srv


def _datum(types, tokens):
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                       loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)})


def _trained(service, types, steps: int = 3):
    training = service.create_lora_training_client(base_model="tiny-llama", rank=4, seed=0).result()
    for _ in range(steps):
        training.forward_backward([_datum(types, TOKENS)], "cross_entropy").result()
        training.optim_step(types.AdamParams(learning_rate=5e-2)).result()
    return training


def _fetch(urls: dict[str, str], out: Path) -> None:
    for name, url in urls.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        urllib.request.urlretrieve(url, str(out / name))  # no API key: the URL is signed


def _peft_logprobs(adapter_dir: Path, tokens: list[int]) -> list[float]:
    """Target-token logprobs of the downloaded adapter over the base model, with plain peft."""
    import torch
    from peft import PeftModel

    from kitchen.adapters.local.tiny import build_tiny

    base, _ = build_tiny()
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    ids = torch.tensor([tokens[:-1]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return [float(lp[i, t]) for i, t in enumerate(tokens[1:])]


def test_exported_adapter_downloads_over_signed_urls_and_loads_with_peft(server, sdk_env, tmp_path):
    import tinker
    from tinker import types

    service = tinker.ServiceClient(base_url=server.base_url)
    training = _trained(service, types)
    served = list(training.forward([_datum(types, TOKENS)], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].data)
    path = training.save_weights_external("final").result().path
    run_id = training.get_info().model_id
    assert path == f"tinker://{run_id}/external_weights/final"

    rest = tinker.RestClient(base_url=server.base_url)
    signed = rest.get_external_weights_urls(path).result()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(signed.urls)
    assert all(KEY not in url for url in signed.urls.values())
    out = tmp_path / "adapter"
    out.mkdir()
    _fetch(signed.urls, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    # the downloaded adapter over the base model computes what the server computes
    assert _peft_logprobs(out, TOKENS) == pytest.approx(served, abs=1e-4)

    listed = {c.checkpoint_id: c for c in rest.list_checkpoints(run_id).result().checkpoints}
    assert listed["external_weights/final"].checkpoint_type == "external"
    assert listed["external_weights/final"].tinker_path == path
    assert rest.get_weights_info_by_tinker_path(path).result().lora_rank == 4

    # a URL is good for its one file, unaltered, and only while the export exists
    url = signed.urls["adapter_config.json"]
    for bad in (url.replace("adapter_config.json", "adapter_model.safetensors"), url[:-4] + "0000",
                url.split("?")[0], url.replace("expires=", "expires=9")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad)
        assert err.value.code == 403 and "get_external_weights_urls" in json.loads(err.value.read())["error"]
    rest.delete_checkpoint_from_tinker_path(path).result()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url)
    assert err.value.code == 404
    with pytest.raises(tinker.NotFoundError, match="not found"):
        rest.get_external_weights_urls(path).result()
    service.close("success").result()
    log = server.log()
    assert "external_weights_files" in log  # the downloads are in the access log...
    assert all(u.split("?")[1] not in log for u in signed.urls.values())  # ...without their signatures
    assert KEY not in log


def test_what_cannot_be_downloaded_is_a_clear_4xx(server, sdk_env):
    import httpx
    import tinker

    service = tinker.ServiceClient(base_url=server.base_url)
    training = service.create_lora_training_client(base_model="tiny-llama", rank=4).result()
    run_id = training.get_info().model_id
    sampler = training.save_weights_for_sampler("s1").result().path
    state = training.save_state("c1").result().path
    h = {"X-API-Key": KEY}
    for ckpt in (sampler, state):
        checkpoint_id = ckpt.split("/", 3)[3]
        r = httpx.get(f"{server.base_url}/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id}/external_weights_urls",
                      headers=h)
        assert r.status_code == 400 and "save_weights_external" in r.json()["error"]
        r = httpx.put(f"{server.base_url}/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id}/ttl",
                      json={"ttl_seconds": 3600}, headers=h)
        assert r.status_code == 400 and "TTL" in r.json()["error"]
    for body, needle in (({"model_id": run_id, "path": "has space"}, "not allowed"),
                         ({"model_id": run_id, "path": "x", "ttl_seconds": 0}, "ttl_seconds"),
                         ({"model_id": "nope", "path": "x"}, "unknown model_id")):
        r = httpx.post(f"{server.base_url}/api/v1/save_weights_external", json=body, headers=h)
        assert r.status_code in (400, 404) and needle in r.json()["error"], r.text
    r = httpx.post(f"{server.base_url}/api/v1/save_weights_external", json={"model_id": run_id, "path": "x"})
    assert r.status_code == 401


def test_tinker_cli_downloads_a_training_checkpoint(server, sdk_env, tmp_path):
    """``tinker checkpoint download tinker://RUN/weights/NAME``: the SDK's own CLI reopens the
    checkpoint, exports it, downloads the files and deletes the temporary export."""
    import tinker
    from tinker import types

    service = tinker.ServiceClient(base_url=server.base_url)
    training = _trained(service, types, steps=2)
    served = list(training.forward([_datum(types, TOKENS)], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].data)
    state = training.save_state("ckpt-2").result().path
    out = tmp_path / "dl"
    env = {**os.environ, "TINKER_BASE_URL": server.base_url, "TINKER_API_KEY": KEY}
    cli = Path(sys.executable).with_name("tinker")
    r = subprocess.run([str(cli), "checkpoint", "download", state, "--output", str(out)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    adapter = next(p.parent for p in out.rglob("adapter_config.json"))
    assert _peft_logprobs(adapter, TOKENS) == pytest.approx(served, abs=1e-4)
    # the CLI deleted its temporary export again
    rest = tinker.RestClient(base_url=server.base_url)
    assert not [c for r_ in rest.list_training_runs(limit=100).result().training_runs
                for c in rest.list_checkpoints(r_.training_run_id).result().checkpoints if c.checkpoint_type == "external"]


def test_age_encrypted_export_decrypts_to_the_plain_files(server, sdk_env, tmp_path):
    pyrage = pytest.importorskip("pyrage")
    import tinker
    from tinker import types

    service = tinker.ServiceClient(base_url=server.base_url)
    training = _trained(service, types, steps=1)
    identity = pyrage.x25519.Identity.generate()
    plain = training.save_weights_external("plain").result().path
    sealed = training.save_weights_external("sealed", ttl_seconds=3600,
                                            age_encryption_recipients=[str(identity.to_public())]).result().path
    rest = tinker.RestClient(base_url=server.base_url)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _fetch(rest.get_external_weights_urls(plain).result().urls, a)
    sealed_urls = rest.get_external_weights_urls(sealed).result().urls
    assert sealed_urls and all(name.endswith(".age") for name in sealed_urls)
    _fetch(sealed_urls, b)
    for name in sealed_urls:
        decrypted = pyrage.decrypt((b / name).read_bytes(), [identity])
        assert decrypted == (a / name[:-4]).read_bytes()
