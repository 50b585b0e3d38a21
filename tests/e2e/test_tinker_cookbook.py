"""tinker-cookbook 0.6.1, unmodified, against ``kitchen serve`` on the real SmolLM2-135M.

This is what a cookbook user does: start ``kitchen serve``, point ``TINKER_BASE_URL`` at it
and run the cookbook's own loops (``supervised.train`` on a conversation file, ``rl.train``
on its arithmetic env, ``preference.train_dpo``), each as a subprocess
(tests/support/cookbook_loops.py). The cookbook loads the tokenizer with
``AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")`` on the client, so
a temporary Hugging Face cache (huggingface_hub's own layout) holds the tokenizer files
of kitchen's converted SmolLM2, with HF_HUB_OFFLINE=1: nothing is downloaded.

``make test-slow`` installs the cookbook first (``make cookbook``); without it these skip.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from hub_fake import populate_cache
from kitchen.serve.testing import serve_subprocess

pytest.importorskip("tinker_cookbook", reason="tinker-cookbook is installed by `make cookbook` (make test-slow)")
pytestmark = pytest.mark.slow

KEY = "tml-kitchen-cookbook-key"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LOOPS = REPO / "tests" / "support" / "cookbook_loops.py"
KITCHEN = (str(Path(sys.executable).with_name("kitchen")), "serve")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    """An offline HF cache holding SmolLM2's tokenizer (from kitchen's converted copy)."""
    from kitchen.adapters.local.models import convert_gguf, resolve_model

    src = convert_gguf(Path(resolve_model("smollm2-135m-instruct").path), quiet=True)
    files = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file() and p.suffix != ".safetensors"}
    home = tmp_path_factory.mktemp("hf-home")
    populate_cache(home, MODEL, {"main": ("c0" * 20, files)})
    return home


def kitchen_serve(state_dir: Path):
    return serve_subprocess(KEY, "local", state_dir=str(state_dir), entry=KITCHEN, startup_timeout_s=300,
                            extra_args=("--model", MODEL))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with kitchen_serve(tmp_path_factory.mktemp("state")) as srv:
        yield srv


def client_env(srv, hf_home: Path) -> dict[str, str]:
    """The loop's environment: kitchen's server, the offline HF cache, and no way off this machine
    (the cookbook fetches a model price list from the web; a dead proxy makes that fail at once)."""
    dead = "http://127.0.0.1:9"
    return {**os.environ, "TINKER_BASE_URL": srv.base_url, "TINKER_API_KEY": KEY, "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1", "HOME": str(hf_home.parent), "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
            "http_proxy": dead, "https_proxy": dead, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def start_loop(loop: str, log_path: Path, srv, hf_home: Path, *args: str) -> subprocess.Popen:
    log_path.mkdir(parents=True, exist_ok=True)
    out = open(log_path.parent / f"{log_path.name}.out", "ab")
    return subprocess.Popen([sys.executable, str(LOOPS), loop, "--log-path", str(log_path), *args],
                            env=client_env(srv, hf_home), stdout=out, stderr=subprocess.STDOUT)


def run_loop(loop: str, log_path: Path, srv, hf_home: Path, *args: str, timeout: float = 600) -> None:
    proc = start_loop(loop, log_path, srv, hf_home, *args)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (log_path.parent / f"{log_path.name}.out").read_text(errors="replace")
    assert rc == 0, f"{loop} loop failed:\n{out[-6000:]}\n--- server ---\n{srv.log()[-3000:]}"
    assert "Traceback" not in srv.log(), srv.log()[-3000:]


def check_checkpoints_load(srv, records: list[dict]) -> None:
    """Every tinker:// path the cookbook recorded is one the server can open."""
    import tinker
    from tinker import types

    service = tinker.ServiceClient(base_url=srv.base_url, api_key=KEY)
    rest = tinker.RestClient(base_url=srv.base_url, api_key=KEY)
    prompt = types.ModelInput.from_ints([1, 9690, 198])
    for rec in records:
        assert rest.get_weights_info_by_tinker_path(rec["state_path"]).result().base_model == MODEL
        assert rest.get_weights_info_by_tinker_path(rec["sampler_path"]).result().base_model == MODEL
    for rec in (records[0], records[-1]):  # sampling from every one would only repeat this
        sampler = service.create_sampling_client(model_path=rec["sampler_path"]).result()
        out = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2, temperature=0.0)).result()
        assert len(out.sequences[0].tokens) >= 1
    final = service.create_training_client_from_state(records[-1]["state_path"]).result()
    assert final.get_info().model_data.model_name == MODEL
    service.close("success").result()


def check_weights_download(srv, record: dict, out: Path, monkeypatch) -> None:
    """The cookbook's ``weights.download`` of a training checkpoint (it reopens the state, exports
    it age-encrypted to a fresh key, downloads over the signed URLs, decrypts, deletes the export)
    gives a PEFT adapter that, over the plain base model, scores tokens as the server's sampler does."""
    import tinker
    import torch
    from peft import PeftModel
    from tinker import types
    from tinker_cookbook import weights
    from transformers import AutoModelForCausalLM

    from kitchen.adapters.local.models import convert_gguf, resolve_model

    monkeypatch.setenv("TINKER_API_KEY", KEY)
    weights.download(tinker_path=record["state_path"], output_dir=str(out), base_url=srv.base_url)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    tokens = [1, 9690, 198, 19556, 28, 1834, 30, 2, 198]
    service = tinker.ServiceClient(base_url=srv.base_url, api_key=KEY)
    served = service.create_sampling_client(model_path=record["sampler_path"]).result().compute_logprobs(
        types.ModelInput.from_ints(tokens)).result()
    base = AutoModelForCausalLM.from_pretrained(str(convert_gguf(Path(resolve_model("smollm2-135m-instruct").path))),
                                                dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits[0].float(), dim=-1)
    local = [float(lp[i, t]) for i, t in enumerate(tokens[1:])]
    assert local == pytest.approx(served[1:], abs=2e-3)
    rest = tinker.RestClient(base_url=srv.base_url, api_key=KEY)
    # the temporary export (made from a new training run on the checkpoint) is gone again
    runs = rest.list_training_runs(limit=100).result().training_runs
    assert all(c.checkpoint_type != "external" for r in runs for c in rest.list_checkpoints(r.training_run_id).result().checkpoints)
    service.close("success").result()


def write_conversations(path: Path, n: int) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_supervised_train_resumes_after_a_kill_and_a_server_restart(hf_home, tmp_path):
    """supervised.train on a conversation file: killed after its first checkpoint, the server
    restarted on the same --state-dir, run again: it resumes from the recorded tinker:// path at
    the right step, finishes, and the loss went down."""
    data = write_conversations(tmp_path / "conversations.jsonl", 12)
    n_batches, steps = 3, 6  # 12 conversations in batches of 4, two epochs
    log = tmp_path / "sft"
    args = ("--data", str(data), "--batch-size", "4", "--epochs", "2", "--max-steps", str(steps), "--save-every", "2")
    state = tmp_path / "state"
    with kitchen_serve(state) as srv:
        proc = start_loop("sft", log, srv, hf_home, *args)
        deadline = time.monotonic() + 600
        while not read_jsonl(log / "checkpoints.jsonl") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, (log.parent / "sft.out").read_text()[-4000:]
    assert srv.process.returncode == 0
    recorded = read_jsonl(log / "checkpoints.jsonl")
    assert recorded, (log.parent / "sft.out").read_text()[-4000:]
    resume_step = (recorded[-1]["epoch"] or 0) * n_batches + recorded[-1]["batch"]
    assert 0 < resume_step < steps

    with kitchen_serve(state) as srv:  # a fresh server process on the same state
        run_loop("sft", log, srv, hf_home, *args)
        assert f"Resumed training from {recorded[-1]['state_path']}" in (log / "logs.log").read_text()
        metrics = {m["step"]: m for m in read_jsonl(log / "metrics.jsonl") if "train_mean_nll" in m}
        assert sorted(metrics) == list(range(steps))  # each step once: resumed at the recorded batch
        # The server restores the optimizer step count the checkpoint holds. The cookbook (0.6.1,
        # submit_ahead=1) asks for checkpoint s after it has submitted step s+1, so that state holds
        # s+2 updates and the first resumed step is update s+3; from there one update per step.
        kitchen_steps = [metrics[s]["kitchen_step"] for s in range(resume_step, steps)]
        assert kitchen_steps == [float(resume_step + 3 + i) for i in range(len(kitchen_steps))]
        nll = [metrics[s]["train_mean_nll"] for s in range(steps)]
        assert all(math.isfinite(x) for x in nll)
        assert sum(nll[3:]) / 3 < 0.7 * sum(nll[:3]) / 3, nll  # epoch 2 clearly below epoch 1
        records = read_jsonl(log / "checkpoints.jsonl")
        assert records[-1]["name"] == "final"
        check_checkpoints_load(srv, records)


def test_rl_train_on_the_arithmetic_env(server, hf_home, tmp_path):
    log = tmp_path / "rl"
    run_loop("rl", log, server, hf_home, "--batch-size", "2", "--max-steps", "3", "--save-every", "2", "--lr", "1e-4")
    metrics = [m for m in read_jsonl(log / "metrics.jsonl") if any(k.startswith("env/") for k in m)]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        rewards = {k: v for k, v in m.items() if k.startswith("env/all/reward")}
        assert rewards and all(math.isfinite(v) for v in rewards.values()), m
        # the sampler's logprobs of its own samples are the trainer's: the cookbook measures the gap
        assert abs(m["optim/kl_sample_train_v1"]) < 1e-3, m
    check_checkpoints_load(server, read_jsonl(log / "checkpoints.jsonl"))


def test_train_dpo_starts_at_log2_and_learns_the_preference(server, hf_home, tmp_path, monkeypatch):
    """At step 0 the policy is the reference, so the DPO loss is ln 2 exactly when the
    server's reference logprobs (sampling) equal its policy logprobs (training)."""
    rows = [{"comparison": {"prompt_conversation": [{"role": "user", "content": f"Say hello to {n}."}],
                            "completion_A": [{"role": "assistant", "content": f"Hello, {n}! Nice to meet you."}],
                            "completion_B": [{"role": "assistant", "content": "No."}]}, "label": "A"}
            for n in ("Ann", "Bob", "Cy", "Di", "Ed", "Flo", "Gus", "Hal")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = tmp_path / "dpo"
    run_loop("dpo", log, server, hf_home, "--data", str(data), "--batch-size", "2", "--max-steps", "4",
             "--save-every", "2", "--lr", "1e-3")
    metrics = [m for m in read_jsonl(log / "metrics.jsonl") if "dpo_loss" in m]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert metrics[0]["dpo_loss"] == pytest.approx(math.log(2), abs=2e-3)
    assert all(math.isfinite(m["dpo_loss"]) for m in metrics)
    assert metrics[-1]["dpo_loss"] < metrics[0]["dpo_loss"]
    records = read_jsonl(log / "checkpoints.jsonl")
    check_checkpoints_load(server, records)
    check_weights_download(server, records[-1], tmp_path / "download", monkeypatch)
