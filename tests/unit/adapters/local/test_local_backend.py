"""The local backend (torch + transformers + peft) on the tiny in-code model."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import REPO  # noqa: E402
from kitchen.adapters.local import LocalTrainingClient  # noqa: E402
from kitchen.errors import ConfigError, DataError, KitchenError  # noqa: E402
from kitchen.ports.training import SamplingClient, TrainingClient  # noqa: E402
from kitchen.ports.types import (  # noqa: E402
    AdamParams,
    Datum,
    LoraConfig,
    SamplingParams,
    SessionConfig,
)
from kitchen.train import losses  # noqa: E402

TEXTS = [
    ("What is 2+2?", "4, of course."),
    ("Name a colour.", "Blue is a colour."),
    ("Say hello.", "Hello there, friend!"),
    ("Count to three.", "One, two, three."),
]


# ------------------------------------------------------------------ helpers
def make_client(rank=4, seed=0, precision="auto", **lora_kw) -> LocalTrainingClient:
    c = LocalTrainingClient(threads=1)
    c.start_session(SessionConfig(base_model="tiny-llama", lora=LoraConfig(rank=rank, **lora_kw), seed=seed,
                                  precision=precision))
    return c


def sft_datum(tok, prompt: str, answer: str) -> Datum:
    msgs = [{"role": "user", "content": prompt}]
    p_ids = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
    p = tok.encode(p_ids, add_special_tokens=False)
    ids = tok.encode(full, add_special_tokens=False)
    weights = [0.0] * (len(p) - 1) + [1.0] * (len(ids) - len(p))
    return Datum(ids[:-1], {"target_tokens": ids[1:], "weights": weights})


def batch(tok, k=4, offset=0) -> list[Datum]:
    return [sft_datum(tok, *TEXTS[(offset + i) % len(TEXTS)]) for i in range(k)]


def trainable(c) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in c._params}


# ------------------------------------------------------------------ loss math (hand-computed)
def test_cross_entropy_is_weighted_sum():
    tlp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    w = torch.tensor([[1.0, 0.5], [2.0, 0.0]])
    out = losses.cross_entropy(tlp, w)
    assert out.loss.item() == pytest.approx(1.0 + 1.0 + 1.0)  # -(−1·1 − 2·0.5 − 0.5·2)
    assert out.num_tokens.item() == pytest.approx(3.5)
    assert out.mean.item() == pytest.approx(3.0 / 3.5)


def test_importance_sampling_hand_computed():
    tlp = torch.tensor([math.log(0.5), math.log(0.2), -1.0])
    slp = torch.tensor([math.log(0.25), math.log(0.4), -7.0])
    adv = torch.tensor([1.5, -1.0, 0.0])
    out = losses.importance_sampling(tlp, slp, adv)
    # ratios 2 and 0.5: -(2·1.5 + 0.5·(−1)) = −2.5; the zero-advantage token adds nothing
    assert out.loss.item() == pytest.approx(-2.5, abs=1e-6)
    assert out.num_tokens.item() == 2


def test_ppo_clipping_hand_computed():
    ratio = torch.tensor([2.0, 0.5, 0.5, 2.0])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    slp = torch.zeros(4)
    tlp = ratio.log().requires_grad_(True)
    out = losses.ppo(tlp, slp, adv)  # defaults: ratio clipped to [0.8, 1.2]
    # min(2,1.2)=1.2 -> -1.2 ; min(.5,.8)=.5 -> -.5 ; min(-.5,-.8)=-.8 -> +.8 ; min(-2,-1.2)=-2 -> +2
    assert out.loss.item() == pytest.approx(-1.2 - 0.5 + 0.8 + 2.0, abs=1e-6)
    assert out.extra["clip_fraction"].item() == pytest.approx(0.5)
    out.loss.backward()
    g = tlp.grad
    assert g[0].item() == 0.0 and g[2].item() == 0.0  # clipped tokens get no gradient
    assert g[1].item() == pytest.approx(-0.5) and g[3].item() == pytest.approx(2.0)
    tight = losses.compute_loss("ppo", ratio.log(), {"logprobs": slp, "advantages": adv},
                                {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1})
    assert tight.loss.item() == pytest.approx(-1.1 - 0.5 + 0.9 + 2.0, abs=1e-6)


def test_loss_config_errors():
    t = torch.zeros(2)
    with pytest.raises(ConfigError, match="cross_entropy"):
        losses.compute_loss("cross_entropi", t, {})
    with pytest.raises(ConfigError, match="clip"):
        losses.compute_loss("ppo", t, {"logprobs": t, "advantages": t}, {"clip_low_threshold": 1.5})
    with pytest.raises(ConfigError, match="clip_eps"):
        losses.compute_loss("ppo", t, {"logprobs": t, "advantages": t}, {"clip_eps": 0.1})


# ------------------------------------------------------------------ client basics
def test_protocols_and_facts():
    c = make_client()
    assert isinstance(c, TrainingClient)
    assert isinstance(c.sampling_client(), SamplingClient)
    assert c.facts["device"] == "cpu" and c.facts["dtype"] == "float32"
    assert c.get_tokenizer().chat_template


def test_forward_matches_manual_nll_and_padding_is_exact():
    # precision=fp32: padding is exact in fp32; under bf16 autocast (precision=auto on a CPU with native bf16)
    # a row's logprobs depend on the padded batch's shape by bf16 rounding
    c = make_client(precision="fp32")
    tok = c.get_tokenizer()
    data = batch(tok)
    res = c.forward(data).result()
    assert [len(lp) for lp in res.logprobs] == [d.length for d in data]
    # manual weighted NLL from each datum alone (no padding)
    total, wsum = 0.0, 0.0
    for i, d in enumerate(data):
        alone = c.forward([d]).result()
        assert alone.logprobs[0] == pytest.approx(res.logprobs[i], abs=1e-5)
        w = d.loss_fn_inputs["weights"]
        total += -sum(wi * lp for wi, lp in zip(w, alone.logprobs[0]))
        wsum += sum(w)
    assert res.metrics["loss:sum"] == pytest.approx(total, rel=1e-5)
    assert res.metrics["num_tokens"] == wsum
    assert res.metrics["num_sequences"] == len(data)
    assert res.loss == pytest.approx(total / wsum, rel=1e-5)
    with torch.no_grad():
        ids = torch.tensor([data[0].model_input])
        logits = c.model(input_ids=ids).logits[0]
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(data[0].loss_fn_inputs["target_tokens"])[:, None])
    assert lp[:, 0].tolist() == pytest.approx(res.logprobs[0], abs=1e-5)


def test_bad_data_is_a_kitchen_error():
    c = make_client()
    with pytest.raises(DataError):
        c.forward_backward([]).result()
    with pytest.raises(DataError, match="advantages"):
        c.forward_backward([Datum([1, 2], {"target_tokens": [2, 3], "logprobs": [0.0, 0.0]})], "ppo").result()
    with pytest.raises(DataError, match="entries"):
        c.forward_backward([Datum([1, 2, 3], {"target_tokens": [2, 3], "weights": [1, 1]})]).result()


@pytest.mark.parametrize("rank", [4, 0])
def test_training_reduces_loss(rank):
    c = make_client(rank=rank)
    data = batch(c.get_tokenizer())
    first = c.forward(data).result().loss
    for _ in range(8):
        c.forward_backward(data).result()
        r = c.optim_step(AdamParams(learning_rate=1e-2 if rank else 3e-3)).result()
    assert r.step == 8 and r.metrics["learning_rate"] == pytest.approx(1e-2 if rank else 3e-3)
    assert c.forward(data).result().loss < first - 0.2


def test_rl_losses_through_the_client():
    c = make_client()
    data = batch(c.get_tokenizer(), k=2)
    lps = c.forward(data).result().logprobs
    rl = []
    for d, lp in zip(data, lps):
        adv = [1.0 if w else 0.0 for w in d.loss_fn_inputs["weights"]]
        rl.append(Datum(d.model_input, {"target_tokens": d.loss_fn_inputs["target_tokens"], "logprobs": lp, "advantages": adv}))
    n_adv = sum(sum(1 for a in d.loss_fn_inputs["advantages"] if a) for d in rl)
    r = c.forward_backward(rl, "importance_sampling").result()  # on-policy: ratio 1
    assert r.metrics["loss:sum"] == pytest.approx(-n_adv, rel=1e-4)
    assert r.loss == pytest.approx(-1.0, rel=1e-4) and r.metrics["num_tokens"] == n_adv
    p = c.forward_backward(rl, "ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}).result()
    assert p.metrics["clip_fraction"] == 0.0 and p.loss == pytest.approx(-1.0, rel=1e-4)


def test_lora_vs_full_trainable_counts_and_unembed():
    # tiny llama: hidden 64, 4 heads x 16, 2 kv heads, mlp 128, 2 layers, vocab 259
    per_layer = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    lora = make_client(rank=4)
    assert lora.facts["trainable_params"] == 2 * per_layer
    attn_only = make_client(rank=4, train_mlp=False)
    assert attn_only.facts["trainable_params"] == 2 * 4 * ((64 + 64) * 2 + (64 + 32) * 2)
    unembed = make_client(rank=4, train_unembed=True)
    assert unembed.facts["trainable_params"] == 2 * per_layer + 4 * (64 + 259)
    assert "lm_head" in unembed.facts["lora_target_modules"]
    full = make_client(rank=0)
    assert full.facts["trainable_params"] == full.facts["total_params"] > lora.facts["trainable_params"]
    with pytest.raises(ConfigError):
        make_client(rank=4, train_mlp=False, train_attn=False)


def test_optimizer_semantics_clip_and_decoupled_weight_decay():
    c = make_client(rank=4)
    data = batch(c.get_tokenizer())
    c.forward_backward(data).result()
    w0 = trainable(c)
    grads = {n: p.grad.detach().clone() for n, p in c._params}
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
    lr, wd, clip, eps = 0.05, 0.3, 1e-3, 1e-6
    r = c.optim_step(AdamParams(learning_rate=lr, beta1=0.9, beta2=0.95, eps=eps, weight_decay=wd, grad_clip_norm=clip)).result()
    assert r.metrics["grad_norm"] == pytest.approx(norm, rel=1e-4)  # reported before clipping
    scale = min(1.0, clip / (norm + 1e-6))
    for n, p in c._params:
        g = grads[n] * scale
        # AdamW step 1 with bias correction: m_hat = g, v_hat = g^2
        expected = w0[n] * (1 - lr * wd) - lr * g / (g.abs() + eps)
        assert torch.allclose(p.detach(), expected, atol=1e-6), n
        assert p.grad is None  # zeroed after the step
    # without clipping the reported norm is still the true norm, and nothing is scaled
    c.forward_backward(data).result()
    g2 = torch.sqrt(sum((p.grad.double() ** 2).sum() for _, p in c._params)).item()
    r2 = c.optim_step(AdamParams(learning_rate=0.0)).result()
    assert r2.metrics["grad_norm"] == pytest.approx(g2, rel=1e-4) and r2.step == 2


# ------------------------------------------------------------------ checkpoints
def _train(c, steps, start=0):
    tok = c.get_tokenizer()
    out = []
    for s in range(start, start + steps):
        r = c.forward_backward(batch(tok, k=3, offset=s)).result()
        c.optim_step(AdamParams(learning_rate=1e-2 * (1 - s / 10), weight_decay=0.01, grad_clip_norm=5.0)).result()
        out.append(r.loss)
    return out


@pytest.mark.parametrize("rank", [4, 0])
def test_exact_resume(tmp_path, rank):
    kw = dict(rank=rank, seed=7, dropout=0.2 if rank else 0.0)
    a = make_client(**kw)
    a.set_checkpoint_dir(tmp_path / "ckpt")
    losses_a = _train(a, 3)
    ref = a.save_state("step_3", 3)
    losses_a += _train(a, 3, start=3)
    final_a = trainable(a)

    assert Path(ref.path, "manifest.json").is_file() and ref.step == 3 and ref.kind == "state"
    b = make_client(**kw)
    b.load_state(ref, with_optimizer=True)
    assert b.step == 3
    losses_b = _train(b, 3, start=3)
    assert losses_b == pytest.approx(losses_a[3:], abs=1e-6)
    final_b = trainable(b)
    for n in final_a:
        assert torch.allclose(final_a[n], final_b[n], atol=1e-7, rtol=0), n


def test_checkpoint_overwrite_and_corruption(tmp_path):
    c = make_client()
    c.set_checkpoint_dir(tmp_path)
    _train(c, 1)
    c.save_state("ck", 1)
    _train(c, 1)
    ref = c.save_state("ck", 2)  # overwrite in place, atomically
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    f = Path(ref.path) / "weights.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(KitchenError, match="weights.safetensors"):
        make_client().load_state(ref)
    with pytest.raises(KitchenError, match="manifest"):
        make_client().load_state(str(tmp_path))
    with pytest.raises(ConfigError, match="set_checkpoint_dir"):
        make_client().save_state("x", 0)  # no checkpoint dir set


# ------------------------------------------------------------------ weights export
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")  # peft's tied-head note on reload
def test_save_weights_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = make_client(rank=4, train_unembed=True)
    _train(c, 3)
    out = c.save_weights(str(tmp_path / "final"))
    assert Path(out, "adapter", "adapter_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template
    ids = torch.tensor([batch(tok, k=1)[0].model_input])
    c.model.eval()
    with torch.no_grad():
        expected = c.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-4)
    # input embeddings must not have absorbed the lm_head LoRA delta
    from kitchen.adapters.local.tiny import build_tiny

    base, _ = build_tiny()
    assert torch.equal(model.get_input_embeddings().weight, base.get_input_embeddings().weight)
    # the PEFT adapter reproduces the same model on the untouched base
    from peft import PeftModel

    pm = PeftModel.from_pretrained(base, str(Path(out, "adapter"))).eval()
    with torch.no_grad():
        assert torch.allclose(pm(input_ids=ids).logits, expected, atol=1e-4)


def test_save_weights_full_ft(tmp_path):
    from transformers import AutoModelForCausalLM

    c = make_client(rank=0)
    _train(c, 2)
    out = c.save_weights(str(tmp_path / "final"))
    assert not Path(out, "adapter").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    c.model.eval()
    with torch.no_grad():
        assert torch.allclose(c.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    # a run dir with final/ is a model name
    c2 = LocalTrainingClient(threads=1)
    c2.start_session(SessionConfig(base_model=str(tmp_path), lora=LoraConfig(rank=4)))
    s = c.sampling_client(str(tmp_path))
    lp_run = s.compute_logprobs([1, 5, 9, 12, 40]).result()
    lp_now = c.sampling_client().compute_logprobs([1, 5, 9, 12, 40]).result()
    assert lp_run[1:] == pytest.approx(lp_now[1:], abs=1e-5)


# ------------------------------------------------------------------ sampling
@pytest.fixture(scope="module")
def trained():
    c = make_client(rank=4)
    _train(c, 5)
    return c


def test_greedy_is_deterministic(trained):
    s = trained.sampling_client()
    prompt = batch(trained.get_tokenizer(), k=1)[0].model_input[:12]
    a = s.sample(prompt, 2, SamplingParams(max_tokens=12, temperature=0.0)).result()
    b = s.sample(prompt, 1, SamplingParams(max_tokens=12, temperature=0.0)).result()
    assert a.sequences[0].tokens == a.sequences[1].tokens == b.sequences[0].tokens
    assert len(a.sequences[0].tokens) <= 12
    k1 = s.sample(prompt, 1, SamplingParams(max_tokens=12, temperature=1.0, top_k=1, seed=3)).result()
    assert k1.sequences[0].tokens == b.sequences[0].tokens


def test_sampling_uses_the_kv_cache_keyword_of_the_installed_transformers(trained):
    """No deprecation warning on every local run: the cache goes in by the keyword the model takes."""
    import warnings

    s = trained.sampling_client()
    prompt = batch(trained.get_tokenizer(), k=1)[0].model_input[:12]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        out = s.sample(prompt, 2, SamplingParams(max_tokens=6, temperature=1.0, seed=1)).result()
    assert all(1 <= len(q.tokens) <= 6 for q in out.sequences)


def test_seed_reproducibility_and_logprobs(trained):
    s = trained.sampling_client()
    prompt = batch(trained.get_tokenizer(), k=1)[0].model_input[:12]
    p = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.95, seed=123)
    a = s.sample(prompt, 3, p).result()
    b = s.sample(prompt, 3, p).result()
    assert [q.tokens for q in a.sequences] == [q.tokens for q in b.sequences]
    c = s.sample(prompt, 3, SamplingParams(max_tokens=10, temperature=1.0, seed=124)).result()
    assert [q.tokens for q in a.sequences] != [q.tokens for q in c.sequences]
    for q in a.sequences:
        assert len(q.logprobs) == len(q.tokens)
        lp = s.compute_logprobs(prompt + q.tokens).result()
        assert lp[0] is None and len(lp) == len(prompt) + len(q.tokens)
        assert lp[len(prompt):] == pytest.approx(q.logprobs, abs=1e-4)


def test_stop_strings_and_ids(trained):
    s = trained.sampling_client()
    tok = trained.get_tokenizer()
    prompt = batch(tok, k=1)[0].model_input[:12]
    g = s.sample(prompt, 1, SamplingParams(max_tokens=20, temperature=0.0)).result().sequences[0]
    assert len(g.tokens) >= 6, "greedy output too short for this test"
    text = tok.decode(g.tokens[:5])
    stop = text[-2:]
    st = s.sample(prompt, 1, SamplingParams(max_tokens=20, temperature=0.0, stop=(stop,))).result().sequences[0]
    assert st.stop_reason == "stop" and stop in tok.decode(st.tokens)
    assert len(st.tokens) <= 5 and st.tokens == g.tokens[: len(st.tokens)]
    sid = s.sample(prompt, 1, SamplingParams(max_tokens=20, temperature=0.0, stop=(g.tokens[3],))).result().sequences[0]
    assert sid.stop_reason == "stop" and sid.tokens[-1] == g.tokens[3] and len(sid.tokens) <= 4
    ml = s.sample(prompt, 2, SamplingParams(max_tokens=3, seed=1)).result()
    assert all(len(q.tokens) <= 3 for q in ml.sequences)


def test_eos_stops_generation():
    c = make_client(rank=0)
    tok = c.get_tokenizer()
    eos = tok.eos_token_id
    # teach the model to emit EOS right away
    d = Datum([1, 5, 6], {"target_tokens": [5, 6, eos], "weights": [0, 0, 1.0]})
    for _ in range(20):
        c.forward_backward([d]).result()
        c.optim_step(AdamParams(learning_rate=1e-2)).result()
    out = c.sampling_client().sample([1, 5, 6], 1, SamplingParams(max_tokens=10, temperature=0.0)).result()
    assert out.sequences[0].tokens == [eos] and out.sequences[0].stop_reason == "stop"


def test_snapshot_is_frozen_and_base_sampler_is_untouched():
    c = make_client(rank=4)
    seq = batch(c.get_tokenizer(), k=1)[0].model_input
    base = c.sampling_client("tiny-llama")
    base_before = base.compute_logprobs(seq).result()
    snap = c.sampling_client()
    before = snap.compute_logprobs(seq).result()
    assert before[1:] == pytest.approx(base_before[1:], abs=1e-6)  # LoRA B starts at zero
    _train(c, 3)
    assert snap.compute_logprobs(seq).result() == before
    assert base.compute_logprobs(seq).result() == base_before
    after = c.sampling_client().compute_logprobs(seq).result()
    assert after[1:] != pytest.approx(before[1:], abs=1e-4)


# ------------------------------------------------------------------ offline / imports
def test_offline_unknown_hub_model_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.time()
    with pytest.raises(KitchenError, match="hf download some-org/no-such-model"):
        LocalTrainingClient().start_session(SessionConfig(base_model="some-org/no-such-model"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(KitchenError, match="not in the local Hugging Face cache"):
        LocalTrainingClient().start_session(SessionConfig(base_model="some-org/no-such-model"))
    assert time.time() - t0 < 10


def test_light_modules_do_not_import_torch():
    code = (
        "import sys; import kitchen.train.losses, kitchen.train.seeding, kitchen.adapters.local, "
        "kitchen.adapters.local.models; from kitchen.train.seeding import seed_everything; seed_everything(1); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ})
    assert out.stdout.strip() == "False"


def test_seeding_roundtrip():
    import random

    import numpy as np

    from kitchen.train.seeding import get_rng_state, seed_everything, set_rng_state

    seed_everything(5, torch=True)
    st = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_out_of_vocab_tokens_are_a_data_error():
    c = make_client()
    with pytest.raises(DataError, match="vocabulary"):
        c.forward([Datum([1, 2, 99999], {"target_tokens": [2, 3, 4], "weights": [1, 1, 1]})]).result()
