"""``TinkerTrainingClient``: the kitchen port over the real tinker SDK, against ``kitchen serve``."""

from __future__ import annotations

import pickle
import time

import pytest

from conftest import SERVE_KEY as KEY
from kitchen.adapters.tinker import TinkerTrainingClient, call_with_retries
from kitchen.errors import BackendError
from kitchen.ports.types import AdamParams, Datum, LoraConfig, SamplingParams, SessionConfig
from kitchen.serve.testing import serve_subprocess

TINY = SessionConfig(base_model="tiny-llama", lora=LoraConfig(rank=8), seed=0)
NOOP = SessionConfig(base_model="noop", lora=LoraConfig(rank=4), seed=0)
ADAM = AdamParams(learning_rate=1e-2)


@pytest.fixture(autouse=True)
def tinker_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path))  # no stored tinker credentials
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)


def batches(tokenizer, n: int = 6) -> list[list[Datum]]:
    texts = ["the quick brown fox", "jumps over the lazy dog", "kitchen serves tinker", "lora adapters train fast"]
    out = []
    for i in range(n):
        data = []
        for t in (texts[i % 4], texts[(i + 1) % 4]):
            ids = tokenizer.encode(t)
            data.append(Datum(ids[:-1], {"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)}))
        out.append(data)
    return out


def run_steps(client, data_batches, depth: int = 1) -> list[float]:
    """depth 1: await each step before the next; depth k: keep k steps in flight."""
    losses: list[float] = []
    inflight = []
    for data in data_batches:
        inflight.append((client.forward_backward(data), client.optim_step(ADAM)))
        if len(inflight) >= depth:
            fb, opt = inflight.pop(0)
            losses.append(fb.result().loss)
            opt.result()
    for fb, opt in inflight:
        losses.append(fb.result().loss)
        opt.result()
    return losses


def assert_close(a: list[float], b: list[float], rel: float = 1e-4) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=rel), (a, b)


def test_matches_local_backend(local_server):
    from kitchen.adapters.local import LocalTrainingClient

    local = LocalTrainingClient()
    local.start_session(TINY)
    remote = TinkerTrainingClient(base_url=local_server.base_url)
    remote.start_session(TINY)
    try:
        data = batches(local.get_tokenizer())
        assert remote.get_tokenizer().encode("kitchen") == local.get_tokenizer().encode("kitchen")
        want = run_steps(local, data)
        got = run_steps(remote, data)
        assert_close(got, want)
        assert got[-1] < got[0]
        fwd = remote.forward(data[0]).result()
        assert fwd.loss == pytest.approx(local.forward(data[0]).result().loss, rel=1e-4)
        assert [len(x) for x in fwd.logprobs] == [d.length for d in data[0]]
    finally:
        remote.close()
        local.close()


def test_pipelining_gives_identical_losses(local_server):
    a = TinkerTrainingClient(base_url=local_server.base_url)
    b = TinkerTrainingClient(base_url=local_server.base_url)
    a.start_session(TINY)
    b.start_session(TINY)
    try:
        data = batches(a.get_tokenizer())
        assert_close(run_steps(b, data, depth=4), run_steps(a, data, depth=1), rel=1e-6)
    finally:
        a.close()
        b.close()


def test_save_state_then_resume_continues_identically(local_server, tmp_path):
    a = TinkerTrainingClient(base_url=local_server.base_url)
    a.set_checkpoint_dir(tmp_path / "ckpt")
    a.start_session(TINY)
    data = batches(a.get_tokenizer(), 6)
    run_steps(a, data[:3], depth=2)
    ref = a.save_state("step-3", step=3)
    assert ref.path.startswith("tinker://") and ref.step == 3
    assert (tmp_path / "ckpt" / "step-3" / "tinker_checkpoint.json").exists()
    want = run_steps(a, data[3:], depth=2)
    a.close()

    b = TinkerTrainingClient(base_url=local_server.base_url)
    b.start_session(TINY)
    b.load_state(type(ref)(name=ref.name, path=str(tmp_path / "ckpt" / "step-3"), step=3))  # via the local pointer
    got = run_steps(b, data[3:], depth=2)
    assert_close(got, want, rel=1e-5)
    assert b.optim_step(ADAM).result().step == 7
    b.close()


def test_sampling_and_final_weights(local_server, tmp_path):
    c = TinkerTrainingClient(base_url=local_server.base_url)
    c.start_session(TINY)
    tok = c.get_tokenizer()
    run_steps(c, batches(tok, 2))
    sampler = c.sampling_client()
    prompt = tok.encode("the quick")
    res = sampler.sample(prompt, 2, SamplingParams(max_tokens=5, seed=3)).result()
    assert len(res.sequences) == 2 and all(len(s.tokens) == len(s.logprobs) for s in res.sequences)
    lps = sampler.compute_logprobs(prompt).result()
    assert lps[0] is None and len(lps) == len(prompt)
    base = c.sampling_client(base_model="tiny-llama")
    assert base.compute_logprobs(prompt).result() != lps  # trained snapshot differs from the base model
    out = c.save_weights(str(tmp_path / "final"))
    pointer = (tmp_path / "final" / "tinker_weights.json").read_text()
    assert "tinker://" in pointer and KEY not in pointer
    again = c.sampling_client(base_model=out)  # a run dir's final weights
    assert again.compute_logprobs(prompt).result()[1:] == pytest.approx(lps[1:], rel=1e-5)
    c.close()


def test_injected_503s_are_retried(noop_server):
    clean = TinkerTrainingClient(base_url=noop_server.base_url)
    clean.start_session(NOOP)
    data = batches(clean.get_tokenizer(), 4)
    want = run_steps(clean, data, depth=2)
    clean.close()
    faults = "forward_backward:503:2,optim_step:500:1,asample:503:1"
    with serve_subprocess(KEY, "noop", faults=faults, log_level="INFO") as srv:
        c = TinkerTrainingClient(base_url=srv.base_url, retry_backoff_s=0.1)
        c.start_session(NOOP)
        assert_close(run_steps(c, data, depth=2), want, rel=1e-9)
        assert c.sampling_client().sample([1, 2, 3], 1, SamplingParams(max_tokens=3)).result().sequences
        c.close()
        log = srv.log()
        assert log.count("fault: answering forward_backward with 503") == 2
        assert log.count("fault: answering optim_step with 500") == 1
        assert log.count("fault: answering asample with 503") == 1
        assert KEY not in log


def test_stall_is_retried_after_timeout(noop_server):
    clean = TinkerTrainingClient(base_url=noop_server.base_url)
    clean.start_session(NOOP)
    data = batches(clean.get_tokenizer(), 3)
    want = run_steps(clean, data)
    clean.close()
    with serve_subprocess(KEY, "noop", faults="optim_step:stall:1", stall_s=8, log_level="INFO") as srv:
        c = TinkerTrainingClient(base_url=srv.base_url, timeout_s=1.5)
        c.start_session(NOOP)
        t0 = time.monotonic()
        got = run_steps(c, data)
        elapsed = time.monotonic() - t0
        assert_close(got, want, rel=1e-9)  # the stalled optim_step ran exactly once
        assert 1.5 <= elapsed < 8, elapsed  # waited for the timeout, not for the stall
        assert srv.log().count("fault: stalling optim_step") == 1
        c.close()


def test_wrong_key_is_fatal_without_retries(noop_server, monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", "tml-not-the-key")
    c = TinkerTrainingClient(base_url=noop_server.base_url, max_retries=3, retry_backoff_s=3.0)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as info:
        c.start_session(NOOP)
    assert time.monotonic() - t0 < 3.0  # no kitchen-level retry (the first would wait 3 s)
    msg = str(info.value)
    assert "401" in msg and "TINKER_API_KEY" in msg and "tml-not-the-key" not in msg


def test_missing_key_is_a_backend_error_naming_it(monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY")
    c = TinkerTrainingClient(base_url="http://127.0.0.1:9")  # nothing listens; nothing is contacted
    with pytest.raises(BackendError, match="TINKER_API_KEY") as info:
        c.start_session(NOOP)
    assert "export TINKER_API_KEY" in str(info.value)


def test_rank_zero_is_rejected_before_contacting_the_server():
    c = TinkerTrainingClient(base_url="http://127.0.0.1:9")
    with pytest.raises(BackendError, match="LoRA"):
        c.start_session(SessionConfig(base_model="noop", lora=LoraConfig(rank=0)))


def test_key_never_in_repr_or_pickle(noop_server):
    c = TinkerTrainingClient(base_url=noop_server.base_url, timeout_s=30)
    c.start_session(NOOP)
    assert KEY not in repr(c)
    assert KEY.encode() not in pickle.dumps(c)
    assert KEY not in repr(vars(c).get("config"))
    c.close()


def test_call_with_retries_backoff_and_fatal():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    assert call_with_retries(flaky, max_retries=3, backoff_s=0.5, sleep=sleeps.append) == "ok"
    assert sleeps == [0.5, 1.0]

    calls.clear()

    def fatal():
        calls.append(1)
        raise BackendError("no")

    with pytest.raises(BackendError):
        call_with_retries(fatal, max_retries=5, sleep=sleeps.append)
    assert len(calls) == 1

    with pytest.raises(ConnectionError):
        call_with_retries(lambda: (_ for _ in ()).throw(ConnectionError("down")), max_retries=2, backoff_s=0, sleep=lambda s: None)
