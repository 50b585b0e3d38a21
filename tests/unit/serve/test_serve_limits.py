"""``kitchen serve`` bounds the work one request can ask for (issue 23, item A).

The real server in a subprocess over loopback HTTP (httpx where the test needs a body the
SDK would not send, the tinker SDK elsewhere); the cancellation test drives the sampling
worker in-process, where it can hold the worker busy deterministically.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from conftest import SERVE_KEY as KEY
from kitchen.serve.testing import serve_subprocess

H = {"X-API-Key": KEY}


def _threads(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", headers=H).text):
        if fam.name == name:
            return fam.samples[0].value
    raise KeyError(name)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    args = ("--max-sample-tokens-per-request", "1000", "--max-sample-tokens-in-flight", "5000", "--result-ttl-s", "1.5",
            "--max-user-metadata-kb", "4", "--max-json-body-mb", "0.5", "--max-models-per-session", "3")
    with serve_subprocess(KEY, "noop", state_dir=str(tmp_path_factory.mktemp("limits")), extra_args=args) as srv:
        yield srv


def _session(url: str, **metadata: str) -> str:
    r = httpx.post(f"{url}/api/v1/create_session", json={"tags": [], "user_metadata": metadata, "sdk_version": "0.38.0"},
                   headers=H)
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


def _sample(url: str, session: str, n: int, prompt: list[int], max_tokens: int) -> httpx.Response:
    body = {"sampling_session_id": None, "base_model": "noop", "num_samples": n,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": prompt}]},
            "sampling_params": {"max_tokens": max_tokens, "temperature": 1.0}}
    return httpx.post(f"{url}/api/v1/asample", json=body, headers=H)


def _retrieve(url: str, request_id: str) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/retrieve_future", json={"request_id": request_id}, headers=H, timeout=30)


def test_a_sample_over_the_per_request_budget_is_400_naming_limit_and_flag(limited):
    url = limited.base_url
    sid = _session(url)
    r = _sample(url, sid, 10, [1, 2, 3, 4], 97)  # 10 x (4 + 97) = 1010 > 1000
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert "1010" in msg and "1000" in msg and "--max-sample-tokens-per-request" in msg
    r = _sample(url, sid, 10, [1, 2, 3, 4], 96)  # 1000: allowed
    assert r.status_code == 200, r.text
    assert _retrieve(url, r.json()["request_id"]).status_code == 200
    assert _metric(url, "kitchen_serve_sample_tokens_in_flight") == 0


def test_results_are_dropped_after_retrieval_grace_or_ttl_and_the_gauge_counts_them(limited):
    url = limited.base_url
    sid = _session(url)
    unretrieved = _sample(url, sid, 2, [5, 6], 8).json()["request_id"]
    time.sleep(0.3)
    assert _metric(url, "kitchen_serve_retained_results") >= 1
    assert _metric(url, "kitchen_serve_retained_result_bytes") > 0
    time.sleep(1.6)  # past --result-ttl-s 1.5
    r = _retrieve(url, unretrieved)
    assert r.status_code == 404 and "unknown request_id" in r.json()["error"]
    assert _metric(url, "kitchen_serve_retained_results") == 0
    assert _metric(url, "kitchen_serve_retained_result_bytes") == 0


def test_user_metadata_and_json_body_limits(limited):
    url = limited.base_url
    r = httpx.post(f"{url}/api/v1/create_session",
                   json={"tags": [], "user_metadata": {"k": "x" * 5000}, "sdk_version": "0.38.0"}, headers=H)
    assert r.status_code == 400 and "--max-user-metadata-kb" in r.json()["error"]
    big = b'{"tags": [], "pad": "' + b"y" * (600 << 10) + b'"}'
    r = httpx.post(f"{url}/api/v1/create_session", content=big, headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 413 and "--max-json-body-mb" in r.json()["error"]
    assert httpx.get(f"{url}/api/v1/healthz", headers=H).status_code == 200


def _create_model(url: str, session: str, seq: int) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/create_model", headers=H, json={
        "session_id": session, "model_seq_id": seq, "base_model": "noop",
        "lora_config": {"rank": 4, "seed": 0, "train_mlp": True, "train_attn": True, "train_unembed": False}})


def test_duplicate_create_model_starts_no_thread_and_models_per_session_are_capped(limited):
    url, pid = limited.base_url, limited.process.pid
    sid = _session(url)
    first = _create_model(url, sid, 0)
    assert first.status_code == 200, first.text
    assert _retrieve(url, first.json()["request_id"]).status_code == 200
    before = _threads(pid)
    for _ in range(200):
        r = _create_model(url, sid, 0)
        assert r.status_code == 409 and "already exists" in r.json()["error"]
    time.sleep(0.3)
    assert _threads(pid) <= before + 2, (before, _threads(pid))  # it was +200 threads before the fix
    assert _create_model(url, sid, 1).status_code == 200
    assert _create_model(url, sid, 2).status_code == 200
    r = _create_model(url, sid, 3)
    assert r.status_code == 400 and "--max-models-per-session" in r.json()["error"]
    other = _session(url)
    assert _create_model(url, other, 0).status_code == 200


def test_bad_limit_flags_exit_2(tmp_path):
    import subprocess
    import sys

    for args, needle in ((("--max-sample-tokens-per-request", "0"), "--max-sample-tokens-per-request"),
                         (("--result-ttl-s", "-1"), "--result-ttl-s"),
                         (("--shutdown-timeout-s", "inf"), "--shutdown-timeout-s"),
                         (("--max-sample-tokens-in-flight", "10"), "--max-sample-tokens-in-flight"),
                         (("--public-url", "ftp://x"), "--public-url")):
        p = subprocess.run([sys.executable, "-m", "kitchen.serve", "--backend", "noop", "--port", "0",
                            "--state-dir", str(tmp_path / "s"), *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_cancel_takes_queued_samples_off_the_queue_and_releases_their_budget(tmp_path):
    from kitchen.serve.endpoints.context import ServeContext
    from kitchen.serve.state import ServerState

    state = ServerState(backend="noop", state_dir=str(tmp_path / "s"))
    ctx = ServeContext(state, external=None, models={})  # type: ignore[arg-type]
    gate, ran = threading.Event(), []

    def blocker() -> dict:
        gate.wait(10)
        return {"done": "blocker"}

    def queued() -> dict:
        ran.append("queued")
        return {"done": "queued"}

    busy = ctx.on_sampler(blocker, client="a", cost=state.sample_budget.reserve(1, 1, 1))
    cost = state.sample_budget.reserve(4, 10, 90)
    victim = ctx.on_sampler(queued, client="a", cost=cost)
    assert state.sample_budget.used == 2 + 400
    assert state.futures.cancel(victim.request_id) is True
    gate.set()
    assert state.wait_future(busy.request_id).json_body == {"done": "blocker"}
    rec = state.wait_future(victim.request_id)
    time.sleep(0.2)
    assert rec.error and "cancelled" in rec.error and ran == []
    assert state.sample_budget.used == 0
    assert state.futures.cancel(busy.request_id) is False  # already finished
    state.shutdown(drain_s=5)


def test_the_in_flight_budget_is_a_429_until_work_finishes():
    from kitchen.serve.errors import RequestError
    from kitchen.serve.sample_budget import SampleBudget

    budget = SampleBudget(per_request=1000, in_flight=2500)
    held = [budget.reserve(10, 0, 100), budget.reserve(10, 0, 100)]
    with pytest.raises(RequestError) as err:
        budget.reserve(10, 0, 100)
    assert err.value.status == 429 and "--max-sample-tokens-in-flight" in err.value.message
    budget.release(held.pop())
    assert budget.reserve(10, 0, 100) == 1000


def test_the_sdk_sees_the_limits_as_bad_requests(limited, monkeypatch, tmp_path):
    import tinker
    from tinker import types

    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
    service = tinker.ServiceClient(base_url=limited.base_url)
    sampler = service.create_sampling_client(base_model="noop").result()
    prompt = types.ModelInput.from_ints([1, 2, 3])
    with pytest.raises(tinker.BadRequestError, match="--max-sample-tokens-per-request"):
        sampler.sample(prompt, num_samples=20, sampling_params=types.SamplingParams(max_tokens=100)).result()
    with pytest.raises(tinker.BadRequestError, match="vocabulary of 257"):
        sampler.sample(types.ModelInput.from_ints([1, 999]), num_samples=1,
                       sampling_params=types.SamplingParams(max_tokens=4)).result()
    out = sampler.sample(prompt, num_samples=2, sampling_params=types.SamplingParams(max_tokens=8)).result()
    assert len(out.sequences) == 2
    training = service.create_lora_training_client(base_model="noop", rank=4).result()
    with pytest.raises(tinker.BadRequestError, match="learning_rate"):
        training.optim_step(types.AdamParams(learning_rate=float("inf"))).result()
    service.close("success").result()


def test_kitchen_serve_takes_the_work_limit_flags_and_refuses_a_bad_one() -> None:
    """The Typer command passes every limit to the same checks as `python -m kitchen.serve`."""
    from conftest import run_kitchen

    r = run_kitchen("serve", "--backend", "noop", "--max-models", "0")
    assert r.code == 2 and "--max-models must be at least 1" in r.err and "Traceback" not in r.err, r
    r = run_kitchen("serve", "--backend", "noop", "--max-sample-tokens-in-flight", "10",
                    "--max-sample-tokens-per-request", "20")
    assert r.code == 2 and "--max-sample-tokens-in-flight" in r.err, r
    r = run_kitchen("serve", "--help")
    for flag in ("--api-key-file", "--result-ttl-s", "--max-json-body-mb", "--shutdown-timeout-s", "--public-url"):
        assert flag in r.out, flag
