"""``kitchen serve`` state: adapter-only sampler snapshots, persistence across a restart,
the REST checkpoint/training-run surface, hub ids, and several clients at once.

Real server subprocesses on the tiny local model; the real tinker SDK over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import SERVE_KEY as KEY
from kitchen.serve.testing import serve_subprocess


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)


def _datum(types, tokens):
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                       loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)})


def test_sampler_weights_and_runs_survive_a_restart(tmp_path, sdk_env):
    import tinker
    from tinker import types

    state = tmp_path / "state"
    tokens = list(range(5, 25))
    prompt = types.ModelInput.from_ints(tokens[:8])
    with serve_subprocess(KEY, "local", state_dir=str(state)) as srv:
        service = tinker.ServiceClient(base_url=srv.base_url)
        training = service.create_lora_training_client(base_model="tiny-llama", rank=4, seed=0,
                                                       user_metadata={"renderer": "llama3", "kitchen_lora_alpha": "8"}).result()
        for _ in range(3):
            training.forward_backward([_datum(types, tokens)], "cross_entropy").result()
            training.optim_step(types.AdamParams(learning_rate=5e-2)).result()
        fwd = training.forward([_datum(types, tokens[:8] + [0])], "cross_entropy").result()
        train_lps = list(fwd.loss_fn_outputs[0]["logprobs"].data)
        sampler_path = training.save_weights_for_sampler("after-3").result().path
        state_path = training.save_state("ckpt-3").result().path
        run_id = training.get_info().model_id
        before = service.create_sampling_client(model_path=sampler_path).result().compute_logprobs(prompt).result()
        # the snapshot applies the adapter over the base: same numbers as the training model
        assert before[1:] == pytest.approx(train_lps[:7], abs=1e-4)
        meta = json.loads(next(state.rglob("sampler_weights/after-3/meta.json")).read_text())
        assert meta["kind"] == "lora"
        service.close("success").result()
    assert srv.process.returncode == 0  # SIGTERM: drained and exited cleanly

    with serve_subprocess(KEY, "local", state_dir=str(state)) as srv:
        service = tinker.ServiceClient(base_url=srv.base_url)
        after = service.create_sampling_client(model_path=sampler_path).result().compute_logprobs(prompt).result()
        assert after == pytest.approx(before, abs=1e-6)
        rest = tinker.RestClient(base_url=srv.base_url)
        run = rest.get_training_run(run_id).result()
        assert run.base_model == "tiny-llama" and run.is_lora and run.lora_rank == 4
        assert run.user_metadata["renderer"] == "llama3"
        assert run.last_checkpoint.tinker_path == state_path
        assert run.last_sampler_checkpoint.tinker_path == sampler_path
        assert run_id in [r.training_run_id for r in rest.list_training_runs().result().training_runs]
        kinds = {c.checkpoint_type: c.tinker_path for c in rest.list_checkpoints(run_id).result().checkpoints}
        assert kinds == {"training": state_path, "sampler": sampler_path}
        info = rest.get_weights_info_by_tinker_path(state_path).result()
        assert info.base_model == "tiny-llama" and info.lora_rank == 4
        resumed = service.create_training_client_from_state_with_optimizer(state_path).result()
        out = resumed.forward([_datum(types, tokens[:8] + [0])], "cross_entropy").result()
        assert list(out.loss_fn_outputs[0]["logprobs"].data) == pytest.approx(train_lps, abs=1e-5)
        rest.publish_checkpoint_from_tinker_path(sampler_path).result()
        rest.unpublish_checkpoint_from_tinker_path(sampler_path).result()
        rest.delete_checkpoint_from_tinker_path(sampler_path).result()
        with pytest.raises(tinker.NotFoundError, match="not found"):
            service.create_sampling_client(model_path=sampler_path).result().compute_logprobs(prompt).result()
        assert [c.checkpoint_type for c in rest.list_checkpoints(run_id).result().checkpoints] == ["training"]
        service.close("success").result()


def test_hub_ids_advertised_and_aliases_accepted(noop_server, sdk_env):
    import tinker

    service = tinker.ServiceClient(base_url=noop_server.base_url)
    caps = tinker.RestClient(base_url=noop_server.base_url).get_server_capabilities().result()
    names = [m.model_name for m in caps.supported_models]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in names and "smollm2-135m-instruct" not in names
    training = service.create_lora_training_client(base_model="smollm2-135m-instruct", rank=4).result()
    assert training.get_info().model_data.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(tinker.NotFoundError, match="not served here"):
        service.create_lora_training_client(base_model="meta-llama/Nope-1B", rank=4).result()
    service.close("success").result()


def test_unnamed_snapshots_are_bounded(noop_server, sdk_env):
    """RL loops snapshot every step; only the newest few unnamed ones are kept, older ones are 410 Gone."""
    import tinker
    from tinker import types

    from kitchen.serve.snapshots import EPHEMERAL_KEEP

    service = tinker.ServiceClient(base_url=noop_server.base_url)
    training = service.create_lora_training_client(base_model="noop", rank=4).result()
    samplers = [training.save_weights_and_get_sampling_client().result() for _ in range(EPHEMERAL_KEEP + 2)]
    prompt = types.ModelInput.from_ints([1, 2, 3])
    assert len(samplers[-1].sample(prompt, 1, types.SamplingParams(max_tokens=2)).result().sequences) == 1
    with pytest.raises(Exception, match="gone"):
        samplers[0].sample(prompt, 1, types.SamplingParams(max_tokens=2)).result()
    service.close("success").result()


CLIENT = textwrap.dedent('''
    import json, sys, tinker
    from tinker import types
    url, seed, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    service = tinker.ServiceClient(base_url=url)
    tc = service.create_lora_training_client(base_model="tiny-llama", rank=4, seed=seed).result()
    toks = [(seed * 7 + i) % 200 + 3 for i in range(24)]
    d = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                    loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * 23})
    losses = []
    for _ in range(steps):
        out = tc.forward_backward([d], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=3e-2)).result()
        losses.append(out.metrics["loss:sum"])
    snap = tc.save_weights_and_get_sampling_client().result()
    lps = snap.compute_logprobs(types.ModelInput.from_ints(toks[:6])).result()
    print(json.dumps({"losses": losses, "lps": lps[1:]}))
    service.close("success").result()
''')


def test_two_clients_in_two_processes_train_as_if_alone(local_server, sdk_env, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)

    def start(seed: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), local_server.base_url, str(seed), "6"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(p: subprocess.Popen) -> dict:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    solo = {seed: finish(start(seed)) for seed in (1, 2)}
    both = [start(1), start(2)]
    together = {seed: finish(p) for seed, p in zip((1, 2), both)}
    for seed in (1, 2):
        assert together[seed]["losses"] == pytest.approx(solo[seed]["losses"], rel=1e-5), seed
        assert together[seed]["lps"] == pytest.approx(solo[seed]["lps"], abs=1e-5), seed
    assert solo[1]["losses"] != pytest.approx(solo[2]["losses"], rel=1e-3)  # really two different runs


@pytest.mark.parametrize("rank", [0, 4], ids=["full-ft", "lora"])
def test_lru_evicts_loaded_samplers_and_reloads_them_from_disk(tmp_path, sdk_env, rank):
    """With --max-loaded-samplers 1, switching between two snapshots reloads each from disk
    with the same numbers; rank 0 (full fine-tuning) snapshots hold every weight."""
    import tinker
    from tinker import types

    tokens = list(range(5, 25))
    prompt = types.ModelInput.from_ints(tokens[:8])
    with serve_subprocess(KEY, "local", state_dir=str(tmp_path / "s"), extra_args=("--max-loaded-samplers", "1")) as srv:
        service = tinker.ServiceClient(base_url=srv.base_url)
        tc = service.create_lora_training_client(base_model="tiny-llama", rank=rank, seed=0).result()
        paths = []
        for _ in range(2):
            tc.forward_backward([_datum(types, tokens)], "cross_entropy").result()
            tc.optim_step(types.AdamParams(learning_rate=5e-2)).result()
            paths.append(tc.save_weights_for_sampler(f"s{len(paths)}").result().path)
        a, b = (service.create_sampling_client(model_path=p).result() for p in paths)
        first = a.compute_logprobs(prompt).result()
        other = b.compute_logprobs(prompt).result()
        again = a.compute_logprobs(prompt).result()  # evicted by b, reloaded from disk
        assert again == pytest.approx(first, abs=1e-6)
        assert other != pytest.approx(first, abs=1e-4)
        metas = sorted((tmp_path / "s").rglob("sampler_weights/*/meta.json"))
        assert [json.loads(m.read_text())["kind"] for m in metas] == ["full" if rank == 0 else "lora"] * 2
        service.close("success").result()


def _gauges(srv) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{srv.base_url}/metrics", headers={"X-API-Key": KEY}, timeout=30).text
    return {f.name: f.samples[0].value for f in text_string_to_metric_families(text) if f.samples}


def test_lora_sessions_share_one_base_model_in_memory(tmp_path, sdk_env):
    """Three more LoRA sessions (with a sampler snapshot each) over the same base add only
    their adapters to the server's weights, less than one base copy in all; a full
    fine-tuning session still owns a whole copy."""
    import tinker
    from tinker import types

    tokens = list(range(5, 25))
    prompt = types.ModelInput.from_ints(tokens[:6])
    with serve_subprocess(KEY, "local", state_dir=str(tmp_path / "s")) as srv:
        service = tinker.ServiceClient(base_url=srv.base_url)

        def lora_session(seed: int):
            tc = service.create_lora_training_client(base_model="tiny-llama", rank=4, seed=seed).result()
            tc.forward_backward([_datum(types, tokens)], "cross_entropy").result()
            tc.optim_step(types.AdamParams(learning_rate=5e-2)).result()
            snap = tc.save_weights_and_get_sampling_client().result()
            return tc, snap.compute_logprobs(prompt).result()

        first, first_lps = lora_session(0)
        one = _gauges(srv)["kitchen_serve_weight_bytes"]
        more = [lora_session(seed) for seed in (1, 2, 3)]
        four = _gauges(srv)["kitchen_serve_weight_bytes"]
        full = service.create_lora_training_client(base_model="tiny-llama", rank=0, seed=0).result()
        with_full = _gauges(srv)["kitchen_serve_weight_bytes"]
        base_copy = with_full - four  # what a session that owns its weights costs
        assert base_copy > 0
        assert four - one < base_copy, (one, four, with_full)  # 3 sessions: far less than 3 copies
        # sharing changes no numbers: each session kept its own adapter
        assert all(lps != pytest.approx(first_lps, abs=1e-4) for _, lps in more)
        assert first.save_weights_and_get_sampling_client().result().compute_logprobs(prompt).result() == pytest.approx(first_lps, abs=1e-6)
        assert full.get_info().lora_rank == 0
        service.close("success").result()


def test_a_finished_session_unloads_its_models_and_keeps_what_it_saved(tmp_path, sdk_env):
    """ServiceClient.close ends its session, as on Tinker: its training models leave the
    server's memory (a long-lived server sees many runs), a request naming one is a clear
    4xx, and the state it saved still loads into a new training client."""
    import httpx
    import tinker
    from tinker import types

    tokens = list(range(5, 25))
    with serve_subprocess(KEY, "local", state_dir=str(tmp_path / "s")) as srv:
        keep = tinker.ServiceClient(base_url=srv.base_url)
        kept = keep.create_lora_training_client(base_model="tiny-llama", rank=4, seed=0).result()
        kept.forward_backward([_datum(types, tokens)], "cross_entropy").result()
        done = tinker.ServiceClient(base_url=srv.base_url)
        tc = done.create_lora_training_client(base_model="tiny-llama", rank=4, seed=1).result()
        tc.forward_backward([_datum(types, tokens)], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=5e-2)).result()
        path = tc.save_state("finished-run").result().path
        model_id = tc.get_info().model_id
        before = _gauges(srv)["kitchen_serve_weight_bytes"]

        done.close("success").result()
        deadline = time.monotonic() + 30
        while _gauges(srv)["kitchen_serve_weight_bytes"] >= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gauges(srv)["kitchen_serve_weight_bytes"] < before  # its adapter is out of memory
        r = httpx.post(f"{srv.base_url}/api/v1/get_info", json={"model_id": model_id}, headers={"x-api-key": KEY})
        assert r.status_code == 400 and "unloaded when its session" in r.text, r.text
        restored = keep.create_training_client_from_state(path).result()  # what it saved stays loadable
        assert restored.get_info().lora_rank == 4
        restored.forward_backward([_datum(types, tokens)], "cross_entropy").result()
        kept.optim_step(types.AdamParams(learning_rate=5e-2)).result()  # the other session trains on
        keep.close("success").result()


@pytest.mark.slow
def test_lora_sessions_on_smollm2_share_the_base_in_resident_memory(tmp_path, sdk_env):
    """The same on the real 135M model, by the server's resident memory (/metrics):
    two more LoRA sessions cost less than one base copy (~540 MB in fp32) between them."""
    import tinker
    from tinker import types

    with serve_subprocess(KEY, "local", state_dir=str(tmp_path / "s"), startup_timeout_s=300) as srv:
        service = tinker.ServiceClient(base_url=srv.base_url)
        model = "HuggingFaceTB/SmolLM2-135M-Instruct"
        datum = _datum(types, list(range(100, 132)))

        def session(seed: int):
            tc = service.create_lora_training_client(base_model=model, rank=8, seed=seed).result()
            tc.forward_backward([datum], "cross_entropy").result()  # every weight is read (paged in)
            return tc

        clients = [session(0)]
        g1 = _gauges(srv)
        clients += [session(1), session(2)]
        g3 = _gauges(srv)
        base_bytes = 134_515_008 * 4  # SmolLM2-135M parameters in fp32
        grown = g3["process_resident_memory_bytes"] - g1["process_resident_memory_bytes"]
        # measured: about 0.4 base copies shared (the sessions' own working memory), 2.4 copies unshared
        assert grown < base_bytes, f"two more LoRA sessions grew RSS by {grown / 2**20:.0f} MiB"
        assert g3["kitchen_serve_weight_bytes"] - g1["kitchen_serve_weight_bytes"] < 0.1 * base_bytes
        service.close("success").result()


FLOODER = textwrap.dedent('''
    import sys, tinker
    from tinker import types
    url, n = sys.argv[1], int(sys.argv[2])
    sampler = tinker.ServiceClient(base_url=url).create_sampling_client(base_model="tiny-llama").result()
    prompt = types.ModelInput.from_ints(list(range(5, 13)))
    flood = [sampler.sample(prompt, 4, types.SamplingParams(max_tokens=16, temperature=1.0)) for _ in range(n)]
    print(sum(len(f.result().sequences) for f in flood))
''')


def test_sampling_takes_turns_between_clients(tmp_path, sdk_env):
    """One client (its own process) floods the sampler with requests, another sends one:
    the second is answered while most of the flood is still queued (round robin between
    sessions), not after the flood drains; the flood is served in full too."""
    import time

    import tinker
    from tinker import types

    script = tmp_path / "flooder.py"
    script.write_text(FLOODER)
    n = 24
    with serve_subprocess(KEY, "local", state_dir=str(tmp_path / "s")) as srv:
        prompt = types.ModelInput.from_ints(list(range(5, 13)))
        polite = tinker.ServiceClient(base_url=srv.base_url).create_sampling_client(base_model="tiny-llama").result()
        light = types.SamplingParams(max_tokens=2, temperature=1.0)
        polite.sample(prompt, 1, light).result()  # the base sampler is loaded before the race
        flooder = subprocess.Popen([sys.executable, str(script), srv.base_url, str(n)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while _gauges(srv)["kitchen_serve_pending_futures"] < n // 2:  # the flood is queued on the server
            assert flooder.poll() is None and time.monotonic() < deadline, "the flood never reached the server"
            time.sleep(0.02)
        assert len(polite.sample(prompt, 1, light).result().sequences) == 1
        still_queued = _gauges(srv)["kitchen_serve_pending_futures"]
        out, err = flooder.communicate(timeout=300)
        assert flooder.returncode == 0 and out.split() == [str(4 * n)], err[-2000:]
    assert still_queued >= n // 4, f"the single request waited for the flood: only {still_queued:g} of {n} flood requests left"


def test_fair_queue_serves_clients_in_turn_and_drains_on_close():
    from kitchen.serve.fair_queue import FairQueue

    q: FairQueue[str] = FairQueue()
    for i in range(5):
        q.put("flood", f"f{i}")
    q.put("one", "o0")
    q.put("two", "t0")
    q.put("two", "t1")
    q.close()
    order = []
    while (item := q.get()) is not None:
        order.append(item)
    assert order == ["f0", "o0", "t0", "f1", "t1", "f2", "f3", "f4"]  # each client keeps its own order
    with pytest.raises(RuntimeError):
        q.put("late", "x")
