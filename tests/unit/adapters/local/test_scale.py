"""The local backend at scale, on the tiny model: micro-batches, activation checkpointing,
padding-free rows. Each option must give the single-pass step (Tinker's summed loss)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from kitchen.adapters.local import LocalTrainingClient  # noqa: E402
from kitchen.errors import ConfigError  # noqa: E402
from kitchen.ports.types import AdamParams, Datum, LoraConfig, SessionConfig  # noqa: E402
from kitchen.train.microbatch import MicroBatchOptions, pack_rows, plan_micro_batches, rank_share  # noqa: E402


def ragged_batch(n=8, seed=0, lo=5, hi=40) -> list[Datum]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(lo, hi)
        ids = [rng.randint(3, 250) for _ in range(L)]
        out.append(Datum(ids, {"target_tokens": ids[1:] + [2], "weights": [float(rng.random() > 0.3) for _ in range(L)]}))
    return out


def rl_batch(n=6, seed=1) -> list[Datum]:
    rng = random.Random(seed)
    out = []
    for d in ragged_batch(n, seed):
        L = d.length
        d.loss_fn_inputs["logprobs"] = [-5.5 + rng.uniform(-0.3, 0.3) for _ in range(L)]
        d.loss_fn_inputs["advantages"] = [rng.choice([-1.0, 0.0, 1.0]) for _ in range(L)]
        del d.loss_fn_inputs["weights"]
        out.append(d)
    return out


def client(rank=4, **scale) -> LocalTrainingClient:
    # precision=fp32: each option must give the single-pass step within fp32 tolerance; under bf16 autocast
    # (precision=auto on a CPU with native bf16) a pass's numbers depend on its shape (bf16 rounding)
    scale.setdefault("precision", "fp32")
    c = LocalTrainingClient(threads=1)
    c.start_session(SessionConfig(base_model="tiny-llama", lora=LoraConfig(rank=rank), device="cpu", **scale))
    return c


def train(c, data, steps=3, loss_fn="cross_entropy", cfg=None):
    losses, results = [], []
    for _ in range(steps):
        r = c.forward_backward(data, loss_fn, cfg).result() if cfg else c.forward_backward(data, loss_fn).result()
        c.optim_step(AdamParams(learning_rate=1e-2, grad_clip_norm=0.0)).result()
        losses.append(r.loss)
        results.append(r)
    weights = torch.cat([p.detach().flatten() for _, p in c._params])
    return losses, weights, results


def assert_same_step(a, b, rtol=1e-5):
    (la, wa, ra), (lb, wb, rb) = a, b
    assert la == pytest.approx(lb, rel=rtol, abs=1e-6)
    torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5)
    for x, y in zip(ra[-1].logprobs, rb[-1].logprobs):
        assert len(x) == len(y)
        assert x == pytest.approx(y, rel=1e-4, abs=1e-4)


# ------------------------------------------------------------------ plans (pure)
def test_micro_batch_plan_keeps_order_and_budgets():
    lengths = [10, 30, 5, 40, 12, 7]
    assert plan_micro_batches(lengths, MicroBatchOptions()) == [[0, 1, 2, 3, 4, 5]]
    assert plan_micro_batches(lengths, MicroBatchOptions(micro_batch_size=4)) == [[0, 1, 2, 3], [4, 5]]
    groups = plan_micro_batches(lengths, MicroBatchOptions(max_tokens=60))
    assert [i for g in groups for i in g] == list(range(6))
    assert all(max(lengths[i] for i in g) * len(g) <= 60 for g in groups)
    packed = plan_micro_batches(lengths, MicroBatchOptions(max_tokens=60, padding_free=True))
    assert all(sum(lengths[i] for i in g) <= 60 for g in packed)
    assert len(packed) < len(groups)  # packing wastes no budget on padding


def test_token_budget_smaller_than_longest_sequence_names_its_length():
    with pytest.raises(ConfigError, match=r"longest sequence in the batch \(40 tokens, datum 3\)"):
        plan_micro_batches([10, 30, 5, 40], MicroBatchOptions(max_tokens=32))


def test_rank_shares_cover_the_batch_once():
    for n, w in [(8, 2), (8, 4), (7, 2), (3, 4)]:
        parts = [list(rank_share(n, r, w)) for r in range(w)]
        assert [i for p in parts for i in p] == list(range(n))


def test_pack_rows_fits_capacity():
    lengths = [300, 200, 100, 250, 50, 90]
    rows = pack_rows(lengths, 512)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 512 for r in rows)
    assert len(rows) == 2


# ------------------------------------------------------------------ equal steps
@pytest.mark.parametrize("opts", [dict(micro_batch_size=3), dict(max_tokens_per_micro_batch=64), dict(micro_batch_size=1)])
def test_micro_batches_equal_single_pass_lora(opts):
    data = ragged_batch()
    ref = train(client(), data)
    out = train(client(**opts), data)
    assert out[2][-1].metrics["micro_batches"] > 1
    assert_same_step(out, ref)


def test_micro_batches_equal_single_pass_full_finetune():
    data = ragged_batch()
    assert_same_step(train(client(rank=0, micro_batch_size=3), data), train(client(rank=0), data))


def test_micro_batches_equal_single_pass_ppo_with_clip_fraction():
    data = rl_batch()
    cfg = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}
    ref = train(client(), data, loss_fn="ppo", cfg=cfg)
    out = train(client(micro_batch_size=2), data, loss_fn="ppo", cfg=cfg)
    assert_same_step(out, ref)
    assert out[2][-1].metrics["clip_fraction"] == pytest.approx(ref[2][-1].metrics["clip_fraction"], abs=1e-6)


def test_logits_are_computed_per_micro_batch():
    """One pass (loss_chunk_tokens=null): the vocabulary projection never sees more rows than one micro-batch."""
    data = ragged_batch(8)
    c = client(micro_batch_size=2, loss_chunk_tokens=None)
    seen = []
    head = c.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    c.forward_backward(data).result()
    handle.remove()
    assert len(seen) == 4 and all(shape[0] <= 2 for shape in seen)


def test_chunked_logits_never_exceed_one_chunk_of_tokens():
    """The default: the model computes no logits itself, the loss projects loss_chunk_tokens rows at a time."""
    data = ragged_batch(8)
    c = client(loss_chunk_tokens=16)
    seen = []
    head = c.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    c.forward_backward(data).result()
    handle.remove()
    tokens = sum(d.length for d in data)
    rows = [s[0] if len(s) == 2 else s[0] * s[1] for s in seen]  # [n, V] chunks; the model's own [B, 0, V]
    assert max(rows) <= 16 and sum(1 for s in seen if len(s) == 3 and s[1] == 0) == 1, seen
    assert sum(s[0] for s in seen if len(s) == 2) >= tokens  # every token scored (backward recomputes chunks too)


def saved_activation_bytes(c, data) -> int:
    """Bytes autograd keeps for backward during one forward: what checkpointing trades for compute."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c.forward_backward(data).result()
    return total


def test_activation_checkpointing_same_losses_less_memory():
    data = ragged_batch(8, lo=60, hi=120)
    plain, ckpt = client(), client(activation_checkpointing=True)
    assert_same_step(train(ckpt, data, steps=2), train(plain, data, steps=2))
    with_ckpt = saved_activation_bytes(ckpt, data)
    without = saved_activation_bytes(plain, data)
    assert with_ckpt < 0.8 * without, (with_ckpt, without)


def test_padding_free_equals_padded_and_has_no_cross_attention():
    data = ragged_batch()
    assert_same_step(train(client(padding_free=True), data), train(client(), data))
    # Changing one sequence must not change another's logprobs when they share a packed row.
    c = client(padding_free=True)
    a = c.forward(data).result().logprobs
    changed = list(data)
    ids = [7] * data[0].length
    changed[0] = Datum(ids, {"target_tokens": ids, "weights": [1.0] * len(ids)})
    b = c.forward(changed).result().logprobs
    assert a[0] != pytest.approx(b[0], abs=1e-3)
    for x, y in zip(a[1:], b[1:]):
        assert x == pytest.approx(y, abs=1e-5)


def test_session_facts_show_the_scale_options():
    c = client(micro_batch_size=2, activation_checkpointing=True, padding_free=True)
    assert c.facts["micro_batch_size"] == 2
    assert c.facts["activation_checkpointing"] is True
    assert c.facts["padding_free"] is True


def test_quantization_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        client(quantization="4bit")


def test_fp16_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="for CUDA GPUs"):
        client(mixed_precision="fp16")


# ------------------------------------------------------------------ length-grouped order
def test_length_grouped_order_is_pure_and_cuts_padding():
    from kitchen.train.batching import BatchPlan

    rng = random.Random(3)
    lengths = tuple(rng.randint(8, 512) for _ in range(1000))
    plain = BatchPlan(1000, 8, 2, None, seed=5)
    grouped = BatchPlan(1000, 8, 2, None, seed=5, group_lengths=lengths)
    again = BatchPlan(1000, 8, 2, None, seed=5, group_lengths=lengths)
    for epoch in (0, 1):
        assert sorted(grouped.order(epoch)) == list(range(1000))
    assert [grouped.batch(s).indices for s in range(250)] == [again.batch(s).indices for s in reversed(range(250))][::-1]
    assert grouped.order(0) != grouped.order(1)

    def padded(plan):
        return sum(max(lengths[i] for i in plan.batch(s).indices) * 8 for s in range(plan.total_steps))

    assert padded(grouped) < 0.7 * padded(plain)


def test_length_grouped_run_resumes_exactly(kitchen, tmp_path):
    from conftest import step_losses

    args = ("run", "recipe=sl_basic", "model=tiny-llama", "batch_size=4", "~test_dataset", "num_preview_samples=0",
            "telemetry=jsonl", "length_grouped=true")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert kitchen(*args, "max_steps=4", f"run_dir={full}").code == 0
    assert kitchen(*args, "max_steps=2", f"run_dir={cut}").code == 0
    res = kitchen(*args, "max_steps=4", f"run_dir={cut}", "resume=true")
    assert res.code == 0, res
    assert step_losses(cut) == step_losses(full)


def test_cpu_bf16_mixed_precision_close_to_fp32_and_shown():
    from kitchen.adapters.local.scale import cpu_native_bf16

    if cpu_native_bf16() is None:
        with pytest.raises(ConfigError, match="native bf16"):
            client(mixed_precision="bf16")
        return
    data = ragged_batch()
    c = client(mixed_precision="bf16")
    assert c.facts["precision"].startswith("bf16 autocast") and c.facts["cpu_bf16"] in ("amx_bf16", "avx512_bf16")
    assert all(p.dtype == torch.float32 for _, p in c._params)  # fp32 master weights
    mixed, plain = train(c, data), train(client(), data)
    assert mixed[0] == pytest.approx(plain[0], rel=2e-3)


@pytest.mark.slow  # needs the qlora extra, which `make test-slow` installs (see the Makefile)
@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_qlora_base_is_quantized_and_merges_into_full_precision_weights(quant):
    """QLoRA's quantize + merge on bitsandbytes' CPU kernels (training itself refuses
    quantization off CUDA): the layers really hold 4-bit data, a trained adapter merges
    into dequantized base weights, and the merged copy is a plain model with no packed
    tensors that computes what the QLoRA model computes."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    from kitchen.adapters.local import scale
    from kitchen.adapters.local.models import load_model

    c = client(rank=4)
    ref = load_model("tiny-llama", dtype=torch.float32, device="cpu")[0]
    plain = ref.state_dict()
    fresh = load_model("tiny-llama", dtype=torch.float32, device="cpu")[0]
    q = scale.quantize(fresh, quant, "cpu")
    kind = bnb.nn.Linear4bit if quant == "4bit" else bnb.nn.Linear8bitLt
    layers = [m for m in q.modules() if isinstance(m, kind)]
    packed = torch.uint8 if quant == "4bit" else torch.int8
    assert layers and all(scale.is_quantized(m.weight) and m.weight.dtype == packed for m in layers)
    assert not isinstance(q.get_output_embeddings(), kind)  # the unembedding stays full precision
    name = next(n for n, m in q.named_modules() if isinstance(m, kind))
    w = scale.dequantized(q.get_submodule(name))
    assert w.shape == plain[f"{name}.weight"].shape and torch.allclose(w, plain[f"{name}.weight"], atol=0.05)

    peft_model = get_peft_model(q, PeftLora(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    torch.manual_seed(0)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)  # a trained adapter: nonzero deltas
    c.model = peft_model  # the session now holds a QLoRA model, as start_session builds on CUDA
    merged = c._merged_copy()
    assert not any(scale.is_quantized(p) for p in merged.parameters())
    assert not any("absmax" in k or "quant" in k for k in merged.state_dict())
    ids = torch.tensor([[3, 17, 42, 5, 9, 11]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits.float()
        got = merged(input_ids=ids).logits.float()
    assert torch.allclose(got, want, atol=2e-2), (got - want).abs().max()
    with torch.no_grad():
        unmerged = ref(input_ids=ids).logits.float()
    assert not torch.allclose(got, unmerged, atol=2e-2)  # the adapter's delta is in the merged weights
