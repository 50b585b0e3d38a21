"""``kitchen serve``: the real tinker SDK over real HTTP against the server in a subprocess."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import SERVE_KEY as KEY
from kitchen.serve.faults import FaultPlan, FaultSpecError


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path))  # no stored tinker credentials
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)


def test_plain_sdk_script_trains_and_samples(local_server, sdk_env):
    """A tinker-cookbook-style loop, written against the SDK only, trains and samples."""
    import tinker
    from tinker import types

    service = tinker.ServiceClient(base_url=local_server.base_url)
    training = service.create_lora_training_client(base_model="tiny-llama", rank=8, seed=0).result()
    tokenizer = training.get_tokenizer()  # AutoTokenizer from the server's saved tokenizer dir: offline
    tokens = tokenizer.encode("The kitchen serves Tinker. The kitchen serves Tinker.")
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )
    losses = []
    pending = []
    for _ in range(8):  # pipelined: submit the step, collect results afterwards
        fb = training.forward_backward([datum], "cross_entropy")
        opt = training.optim_step(types.AdamParams(learning_rate=2e-2))
        pending.append((fb, opt))
    for fb, opt in pending:
        out = fb.result()
        opt.result()
        losses.append(out.metrics["loss:sum"] / (len(tokens) - 1))
        assert len(out.loss_fn_outputs[0]["logprobs"].data) == len(tokens) - 1
    assert losses[-1] < losses[0] * 0.9, losses

    saved = training.save_weights_for_sampler("sampler-1").result()
    assert saved.path.startswith("tinker://")
    sampler = service.create_sampling_client(model_path=saved.path).result()
    prompt = types.ModelInput.from_ints(tokens[:5])
    result = sampler.sample(prompt, 2, types.SamplingParams(max_tokens=6, temperature=1.0, seed=1)).result()
    assert len(result.sequences) == 2
    assert all(1 <= len(s.tokens) <= 6 and len(s.logprobs) == len(s.tokens) for s in result.sequences)

    snap = training.save_weights_and_get_sampling_client().result()
    lps = snap.compute_logprobs(prompt).result()
    assert lps[0] is None and len(lps) == 5 and all(x < 0 for x in lps[1:])

    base = service.create_sampling_client(base_model="tiny-llama").result()
    assert len(base.sample(prompt, 1, types.SamplingParams(max_tokens=3)).result().sequences) == 1
    service.close("success").result()


def test_wrong_key_is_401_with_message(noop_server):
    r = httpx.post(f"{noop_server.base_url}/api/v1/create_session", json={}, headers={"X-API-Key": "tml-wrong"})
    assert r.status_code == 401
    assert "TINKER_API_KEY" in r.json()["error"]
    r = httpx.get(f"{noop_server.base_url}/api/v1/healthz")
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    r = httpx.get(f"{noop_server.base_url}/api/v1/healthz", headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_malformed_requests_get_4xx_with_message(noop_server):
    h = {"X-API-Key": KEY}
    url = noop_server.base_url
    r = httpx.post(f"{url}/api/v1/create_session", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(f"{url}/api/v1/create_model", json={"base_model": "noop"}, headers=h)
    assert r.status_code == 400 and "session_id" in r.json()["error"]
    r = httpx.post(f"{url}/api/v1/forward_backward", content=b"\xff\xfe garbage",
                   headers={**h, "Content-Type": "application/x-protobuf"})
    assert 400 <= r.status_code < 500 and r.json()["error"]
    r = httpx.post(f"{url}/api/v1/forward_backward", json={"model_id": "x"}, headers=h)
    assert r.status_code == 415
    r = httpx.post(f"{url}/api/v1/retrieve_future", json={"request_id": "nope"}, headers=h)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = httpx.post(f"{url}/api/v1/no_such_thing", json={}, headers=h)
    assert r.status_code == 404
    r = httpx.post(f"{url}/api/v1/optim_step", json={"model_id": "m", "adam_params": {"learning_rate": "fast"}}, headers=h)
    assert r.status_code == 400 and "learning_rate" in r.json()["error"]


def test_sdk_bad_loss_fn_and_unknown_model_are_client_errors(noop_server, sdk_env):
    import tinker
    from tinker import types

    service = tinker.ServiceClient(base_url=noop_server.base_url)
    training = service.create_lora_training_client(base_model="noop", rank=4).result()
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2]), loss_fn_inputs={"target_tokens": [2, 3]})
    with pytest.raises(tinker.BadRequestError, match="unsupported loss_fn"):
        training.forward_backward([datum], "dpo_magic").result()
    with pytest.raises(Exception, match="not found"):
        service.create_sampling_client(model_path="tinker://nope/sampler_weights/x").result()
    service.close("success").result()


def test_fault_spec_parsing():
    plan = FaultPlan.parse("forward_backward:503:2, optim_step:stall:1")
    assert [r.kind for r in plan.rules] == ["503", "stall"]
    assert plan.take("forward_backward").status == 503
    assert plan.take("forward_backward").status == 503
    assert plan.take("forward_backward") is None
    assert plan.take("optim_step").kind == "stall"
    assert plan.take("optim_step") is None
    assert plan.take("asample") is None
    for bad in ("forward_backward", "x:abc:1", "x:503:many", "x:200:1"):
        with pytest.raises(FaultSpecError):
            FaultPlan.parse(bad)


def test_ready_file_and_generated_key(tmp_path, monkeypatch):
    """Port 0 picks a free port; with no key in the env one is generated and written to a 0600 file."""
    import subprocess
    import sys
    import time

    ready = tmp_path / "ready.json"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("KITCHEN_SERVE_API_KEY", "TINKER_API_KEY")}
    proc = subprocess.Popen([sys.executable, "-m", "kitchen.serve", "--port", "0", "--backend", "noop", "--ready-file", str(ready)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["port"] > 0 and info["base_url"] == f"http://127.0.0.1:{info['port']}"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    # the generated key is in a 0600 file the log names; the log never shows the key itself
    import re
    import stat

    files = re.findall(r"wrote it to (\S+) ", err)
    assert len(files) == 1, err
    key = open(files[0]).read().strip()
    assert key.startswith("tml-kitchen-") and key not in err and key not in out
    assert stat.S_IMODE(__import__("os").stat(files[0]).st_mode) == 0o600
    assert f"{info['port']}" in out
