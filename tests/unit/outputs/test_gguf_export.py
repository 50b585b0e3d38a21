"""`kitchen export --gguf`: one file llama.cpp / Ollama load, written with llama.cpp's `gguf` package.

The file is read back two independent ways: gguf's own GGUFReader (architecture, tensor
types, tokenizer and chat template keys) and transformers' GGUF loader, whose logits must
equal the merged transformers export's (exactly at f32; within quantisation error at q8_0).
"""

from __future__ import annotations

import pytest

from conftest import run_kitchen

RUN = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "batch_size=4", "num_preview_samples=0", "max_steps=2",
       "save_every=2", "eval_every=0", "learning_rate=3e-2", "telemetry=jsonl")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    run = root / "run"
    r = run_kitchen("run", *RUN, f"run_dir={run}")
    assert r.code == 0, r
    for args in (("--out", str(root / "merged"), "--merge"), ("--out", str(root / "m.gguf"), "--gguf", "--quant", "f32"),
                 ("--out", str(root / "q8.gguf"), "--format", "gguf", "--quant", "q8_0")):
        r = run_kitchen("export", str(run), *args)
        assert r.code == 0, r
    assert "Ollama" in r.err and "q8.gguf.Modelfile" in r.err
    return root, run


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def test_gguf_loads_with_transformers_and_matches_the_merged_weights(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = exported
    merged = AutoModelForCausalLM.from_pretrained(str(root / "merged"), dtype=torch.float32)
    ids = list(range(3, 60))
    want = _logits(merged, ids)
    for name, tol in (("m.gguf", 1e-5), ("q8.gguf", 0.05)):
        model = AutoModelForCausalLM.from_pretrained(str(root), gguf_file=name, dtype=torch.float32)
        got = _logits(model, ids)
        assert torch.allclose(got, want, atol=tol, rtol=0), (name, (got - want).abs().max().item())
        if name == "m.gguf":  # (q8_0 can flip the tiny random model's near-tied top tokens)
            assert got.argmax(-1).tolist() == want.argmax(-1).tolist()  # the same greedy tokens
        tok = AutoTokenizer.from_pretrained(str(root), gguf_file=name)
        text = "Salt the water, then add the pasta."
        assert tok(text).input_ids == AutoTokenizer.from_pretrained(str(root / "merged"))(text).input_ids


def test_gguf_reader_sees_a_llama_file_with_tokenizer_and_chat_template(exported):
    from gguf import GGMLQuantizationType, GGUFReader

    root, _ = exported
    reader = GGUFReader(str(root / "q8.gguf"))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    assert "tokenizer.ggml.tokens" in reader.fields and "tokenizer.chat_template" in reader.fields
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32  # norms stay f32, as llama.cpp's converter
    assert "output.weight" not in types or not reader.fields.get("tie_word_embeddings")
    modelfile = (root / "q8.gguf.Modelfile").read_text()
    assert modelfile.startswith("FROM ./q8.gguf\n") and "<|im_start|>" in modelfile and 'stop "<|im_end|>"' in modelfile


@pytest.mark.parametrize(("args", "named"), [
    (("--gguf", "--quant", "q4_k_m"), "llama-quantize"),
    (("--gguf", "--quant", "int3"), "q8_0"),
    (("--gguf", "--push", "me/model"), "does not apply to --format gguf"),
    (("--gguf", "--format", "merged"), "two formats"),
    (("--format", "onnx"), "adapter, merged or gguf"),
])
def test_bad_export_options_are_exit_2_naming_what_is_allowed(exported, tmp_path, args, named):
    _, run = exported
    out = tmp_path / "x.gguf"
    r = run_kitchen("export", str(run), "--out", str(out), *args)
    assert r.code == 2 and named in r.err and "Traceback" not in r.err, r
    assert not out.exists()


def test_an_existing_gguf_is_never_overwritten(exported, tmp_path):
    _, run = exported
    out = tmp_path / "keep.gguf"
    out.write_bytes(b"mine")
    r = run_kitchen("export", str(run), "--out", str(out), "--gguf")
    assert r.code == 2 and "already exists" in r.err, r
    assert out.read_bytes() == b"mine"
