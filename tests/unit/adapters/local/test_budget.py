"""max_tokens_per_micro_batch=auto: budget.choose from a given free memory (no torch needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kitchen.adapters.local import budget
from kitchen.errors import ConfigError

# SmolLM2-135M's shape: 30 layers, hidden 576, MLP 1536, vocabulary 49152
SMOL = SimpleNamespace(config=SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30))
VOCAB = 49152
PER_TOKEN = 30 * (12 * 576 + 6 * 1536) * 4  # fp32 activations kept for backward, per token
CHUNK_FIXED = 256 * VOCAB * 4 * 3  # one chunk's logits, softmax and gradient


def choose(free_gb: float, **kw):
    args = dict(device="cpu", vocab=VOCAB, chunk_tokens=256, max_length=256)
    args.update(kw)
    return budget.choose(SMOL, free=(int(free_gb * 1e9), "the test"), **args)


def test_bytes_per_token_counts_the_layers_and_one_pass_logits():
    assert budget.bytes_per_token(SMOL) == PER_TOKEN
    assert budget.bytes_per_token(SMOL, one_pass_vocab=VOCAB) == PER_TOKEN + VOCAB * 12
    assert budget.bytes_per_token(SMOL, act_bytes=2) == PER_TOKEN // 2


def test_memory_limited_is_the_largest_power_of_two_that_fits_half_the_free_memory():
    b = choose(3.0)
    fits = (int(3.0e9 * budget.MEMORY_FRACTION) - CHUNK_FIXED) // PER_TOKEN  # 697 tokens
    assert b.tokens == 512 and b.limited_by == "memory" and 512 <= fits < 1024
    assert b.free_bytes == int(3e9) and b.bytes_per_token == PER_TOKEN and b.fixed_bytes == CHUNK_FIXED
    assert "auto: 512 tokens per pass" in b.note() and "3.0 GB free by the test" in b.note() and "limited by memory" in b.note()
    assert b.facts() == {"max_tokens_per_micro_batch": 512, "micro_batch_budget": b.note()}


def test_cap_limited_on_the_cpu_and_on_cuda():
    b = choose(100.0)
    assert (b.tokens, b.limited_by) == (budget.CPU_CAP, "cap")
    b = choose(1000.0, device="cuda")
    assert (b.tokens, b.limited_by) == (budget.CUDA_CAP, "cap")
    b = choose(20.0, device="cuda")  # 10 GB of activations: 4096 < the CUDA cap, though above the CPU's
    assert (b.tokens, b.limited_by) == (4096, "memory")


def test_max_length_limited_never_splits_one_sequence():
    b = choose(1.0)  # ~180 tokens fit
    assert (b.tokens, b.limited_by) == (256, "max_length")
    b = choose(100.0, max_length=3000)  # above the cap: one sequence is one pass
    assert (b.tokens, b.limited_by) == (3000, "max_length")
    b = choose(0.0)
    assert (b.tokens, b.limited_by) == (256, "max_length")


def test_one_pass_logits_and_full_fine_tuning_shrink_the_budget():
    chunked = choose(3.0)
    one_pass = choose(3.0, chunk_tokens=None)  # full logits per token: ~2.5 MB
    assert one_pass.bytes_per_token == PER_TOKEN + VOCAB * 12 and one_pass.fixed_bytes == 0
    assert one_pass.tokens == 512 and one_pass.limited_by == "memory"
    assert choose(2.5, chunk_tokens=None).tokens == 256 < choose(2.5).tokens == 512
    full = choose(3.0, full_finetune_params=135_000_000)  # AdamW state and gradients of 135M params: 1.6 GB
    assert full.fixed_bytes == CHUNK_FIXED + 135_000_000 * 12 and full.tokens < chunked.tokens


@pytest.mark.parametrize(("value", "tokens"), [("auto", 0), ("AUTO", 0), (None, 0), (0, 0), (2048, 2048)])
def test_explicit_tokens(value, tokens):
    assert budget.explicit_tokens(value) == tokens
    assert budget.is_auto(value) == (isinstance(value, str))


@pytest.mark.parametrize("bad", ["bogus", 2.5, True])
def test_explicit_tokens_refuses_anything_else(bad):
    with pytest.raises(ConfigError, match="max_tokens_per_micro_batch"):
        budget.explicit_tokens(bad)


def test_free_memory_on_the_cpu_reads_meminfo_or_the_cgroup():
    free, source = budget.free_memory("cpu")
    assert free > 0 and source in ("/proc/meminfo", "psutil", "the cgroup limit")
