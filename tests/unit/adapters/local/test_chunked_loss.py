"""The loss's logits in chunks: the same numbers as one pass, without a [tokens x vocabulary] tensor."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import run_kitchen  # noqa: E402
from kitchen.adapters.local import LocalTrainingClient  # noqa: E402
from kitchen.adapters.local.loss_head import plan_loss_head  # noqa: E402
from kitchen.errors import ConfigError  # noqa: E402
from kitchen.ports.types import AdamParams, Datum, LoraConfig, SessionConfig  # noqa: E402
from kitchen.train.chunked_logprobs import check_chunk_tokens, target_logprobs  # noqa: E402


def _reference(hidden, head, targets):
    logits = head(hidden).float()
    B, T, V = logits.shape
    return -torch.nn.functional.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T), reduction="none").reshape(B, T)


@pytest.mark.parametrize("chunk", [1, 7, 32, 1000])
def test_chunked_logprobs_and_gradients_equal_one_pass(chunk):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False)
    hidden = torch.randn(3, 11, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 300, (3, 11), generator=g)
    weights = torch.rand(3, 11, generator=g)

    ref = _reference(hidden, head, targets)
    (ref * weights).sum().backward()
    ref_grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    got = target_logprobs(hidden, head, targets, chunk)
    (got * weights).sum().backward()
    assert got.shape == targets.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden.grad, ref_grads[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(head.weight.grad, ref_grads[1], rtol=0, atol=1e-5)


def test_under_no_grad_nothing_is_kept_for_backward():
    head = torch.nn.Linear(8, 50, bias=False)
    with torch.no_grad():
        out = target_logprobs(torch.randn(2, 5, 8), head, torch.randint(0, 50, (2, 5)), 3)
    assert not out.requires_grad


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "many"])
def test_chunk_tokens_must_be_a_positive_int(bad):
    with pytest.raises(ConfigError, match="loss_chunk_tokens"):
        check_chunk_tokens(bad)
    assert check_chunk_tokens(None) is None and check_chunk_tokens(64) == 64


# ------------------------------------------------------------------ through the local backend
def _batch(vocab: int, k: int = 4, seed: int = 0) -> list[Datum]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(k):
        n = 9 + 3 * i  # ragged lengths: padding and packing both get exercised
        ids = torch.randint(3, vocab, (n + 1,), generator=g).tolist()
        weights = [0.0] * 3 + [1.0] * (n - 3)
        out.append(Datum(ids[:-1], {"target_tokens": ids[1:], "weights": weights}))
    return out


def _client(chunk, *, rank=4, base="tiny-llama", **scale) -> LocalTrainingClient:
    # precision=fp32: the claim is equality within fp32 tolerance; under bf16 autocast (precision=auto on a CPU with
    # native bf16) the chunked and one-pass paths round their bf16 matmuls differently
    scale.setdefault("precision", "fp32")
    c = LocalTrainingClient(threads=1)
    c.start_session(SessionConfig(base_model=base, lora=LoraConfig(rank=rank, train_unembed=rank > 0), seed=0,
                                  loss_chunk_tokens=chunk, **scale))
    return c


def _train(c, data):
    """Two steps: their losses, the second step's logprobs and the first step's gradients
    (gradients, not weights after AdamW, which turns fp32 rounding in a near-zero gradient into a full step)."""
    first = c.forward_backward(data).result()
    grads = {n: p.grad.detach().clone() for n, p in c._session.params if p.grad is not None}
    c.optim_step(AdamParams(learning_rate=1e-2)).result()
    second = c.forward_backward(data).result()
    c.close()
    return [first.loss, second.loss], second.logprobs, grads


def _untied_model_dir(tmp_path):
    from kitchen.adapters.local.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok))
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 0.5)
    path = tmp_path / "untied"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("case", [
    dict(rank=4),  # LoRA, with the tied output layer trained too
    dict(rank=0),  # full fine-tuning
    dict(rank=4, max_tokens_per_micro_batch=24),  # micro-batched
    dict(rank=4, activation_checkpointing=True),
    dict(rank=4, padding_free=True, micro_batch_size=2),
    dict(rank=4, base="untied"),
], ids=["lora", "full", "micro", "ckpt", "packed", "untied"])
def test_the_local_backend_trains_the_same_with_and_without_chunks(case, tmp_path):
    case = dict(case)
    if case.get("base") == "untied":
        case["base"] = _untied_model_dir(tmp_path)
    one = _train(_client(None, **case), _batch(200))
    for chunk in (5, 64):
        got = _train(_client(chunk, **case), _batch(200))
        assert got[0] == pytest.approx(one[0], rel=1e-5), (chunk, got[0], one[0])
        for a, b in zip(got[1], one[1]):
            assert a == pytest.approx(b, abs=1e-4)
        assert one[2] and got[2].keys() == one[2].keys()
        for name, grad in one[2].items():
            torch.testing.assert_close(got[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_session_facts_name_the_chunk_size_and_a_model_that_cannot_chunk_keeps_one_pass():
    c = _client(128)
    assert c._session.loss_head.chunk_tokens == 128 and c.facts["loss_chunk_tokens"] == 128
    c.close()

    from kitchen.adapters.local.tiny import build_tiny_model

    class SoftCapped(type(build_tiny_model(64))):  # logits transformed after the output layer
        def forward(self, input_ids=None, logits_to_keep=0, **kwargs):
            out = super().forward(input_ids=input_ids, logits_to_keep=logits_to_keep, **kwargs)
            out.logits = 3.0 * torch.tanh(out.logits / 3.0)
            return out

    base = build_tiny_model(64)
    model = SoftCapped(base.config)
    model.load_state_dict(base.state_dict())
    head = plan_loss_head(model, 256)
    assert head.chunk_tokens is None and "SoftCapped changes its logits" in head.why_not
    assert plan_loss_head(base, 256).chunk_tokens == 256
    assert plan_loss_head(base, 256, fsdp=True).chunk_tokens is None


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5"])
def test_a_bad_loss_chunk_tokens_is_exit_2_naming_the_key(value, tmp_path):
    r = run_kitchen("validate", "adapters=noop", f"loss_chunk_tokens={value}", f"run_dir={tmp_path / 'r'}")
    assert r.code == 2 and "loss_chunk_tokens" in r.err and "Traceback" not in r.err, r


def test_a_run_prints_and_keeps_its_chunk_size(tmp_path):
    r = run_kitchen("run", "model=tiny-llama", "max_steps=1", "loss_chunk_tokens=32", f"run_dir={tmp_path / 'r'}")
    assert r.code == 0, r
    assert "loss_chunk_tokens=32" in r.out + r.err  # the session line
    assert "loss_chunk_tokens: 32" in (tmp_path / "r" / "config.yaml").read_text()  # what a resume uses


def test_sampler_logprobs_are_the_same_chunked():
    """compute_logprobs (DPO references, distillation teachers) takes the chunked path too."""
    from kitchen.adapters.local.sampling import LocalSamplingClient
    from kitchen.adapters.local.tiny import build_tiny

    model, tok = build_tiny()[:2]
    seqs = [[5, 9, 13, 7, 21, 3], [4, 8], [11]]
    one = LocalSamplingClient(model, tok).compute_logprobs_batch(seqs)
    chunked = LocalSamplingClient(model, tok, loss_chunk_tokens=3)
    got = chunked.compute_logprobs_batch(seqs)
    assert chunked._loss_head.chunk_tokens == 3
    assert [len(s) for s in got] == [6, 2, 1] and got[2] == [None] and got[0][0] is None
    for a, b in zip(got, one):
        assert a[1:] == pytest.approx(b[1:], abs=1e-5)


def test_a_pass_keeps_its_own_hidden_states_when_another_thread_runs_the_same_model():
    """Rollout lanes and kitchen serve's LoRA sessions run one decoder from several threads; a module's
    hooks fire for every thread's pass, so another thread's forward, finishing after this pass's own
    decoder output (here: started from a hook on the whole model), must not replace what it keeps."""
    import threading

    from kitchen.adapters.local.loss_head import final_hidden
    from kitchen.adapters.local.tiny import build_tiny_model, build_tiny_tokenizer

    model = build_tiny_model(len(build_tiny_tokenizer())).eval()
    main = threading.get_ident()

    def other_thread_pass(_module, _inputs, _output):
        if threading.get_ident() == main:
            t = threading.Thread(target=lambda: model(input_ids=torch.ones(1, 9, dtype=torch.long)))
            t.start()
            t.join()

    handle = model.register_forward_hook(other_thread_pass)  # after the decoder's hooks: its output is kept already
    try:
        with torch.no_grad():
            hidden = final_hidden(model, model, {"input_ids": torch.ones(2, 5, dtype=torch.long), "use_cache": False})
    finally:
        handle.remove()
    assert tuple(hidden.shape[:2]) == (2, 5)
