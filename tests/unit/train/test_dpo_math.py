import math

import pytest

from kitchen.train.dpo import (
    build_weighted_ce_datum,
    dpo_loss,
    dpo_margins,
    dpo_token_weights,
    log_sigmoid,
    sigmoid,
)

# Pair 1: pc=-10, pr=-12, rc=-11, rr=-11 -> chosen ratio +1, rejected ratio -1, h=2
# Pair 2: pc=-5,  pr=-4,  rc=-5,  rr=-5  -> chosen ratio  0, rejected ratio +1, h=-1
PC, PR, RC, RR = [-10.0, -5.0], [-12.0, -4.0], [-11.0, -5.0], [-11.0, -5.0]
BETA = 0.5


def test_stable_sigmoids():
    assert sigmoid(0.0) == 0.5
    assert log_sigmoid(0.0) == pytest.approx(-math.log(2))
    assert log_sigmoid(-1000.0) == pytest.approx(-1000.0)
    assert log_sigmoid(1000.0) == pytest.approx(0.0)
    assert sigmoid(-1000.0) == pytest.approx(0.0) and sigmoid(1000.0) == 1.0


def test_dpo_loss_single_pair():
    # beta*h = 0.5 * 2 = 1 -> loss = -log sigmoid(1) = log1p(exp(-1)) = 0.31326168751822286
    r = dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], BETA)
    assert r.loss == pytest.approx(math.log1p(math.exp(-1.0)))
    assert r.loss == pytest.approx(0.31326168751822286)
    assert r.accuracy == 1.0
    assert r.chosen_reward == pytest.approx(0.5)
    assert r.rejected_reward == pytest.approx(-0.5)
    assert r.margin == pytest.approx(1.0)


def test_dpo_loss_two_pairs():
    # pair 2: beta*h = -0.5 -> log1p(exp(0.5)) = 0.9740769841801067
    # mean = (0.31326168751822286 + 0.9740769841801067) / 2 = 0.6436693358491648
    r = dpo_loss(PC, PR, RC, RR, BETA)
    assert dpo_margins(PC, PR, RC, RR) == [2.0, -1.0]
    assert r.loss == pytest.approx(0.6436693358491648)
    assert r.accuracy == 0.5
    assert r.margin == pytest.approx(0.25)  # (1.0 + -0.5) / 2
    assert r.chosen_reward == pytest.approx(0.25)  # (0.5 + 0.0) / 2
    assert r.rejected_reward == pytest.approx(0.0)  # (-0.5 + 0.5) / 2
    assert r.metrics()["dpo_loss"] == r.loss
    assert set(r.metrics("train/")) == {
        "train/dpo_loss",
        "train/accuracy",
        "train/margin",
        "train/chosen_reward",
        "train/rejected_reward",
    }


def test_dpo_loss_tie_and_extremes():
    r = dpo_loss([-3.0], [-3.0], [-3.0], [-3.0], 0.1)
    assert r.loss == pytest.approx(math.log(2)) and r.accuracy == 0.0  # ties are not correct
    # huge negative margin: loss ~ |beta*h| without overflow
    r = dpo_loss([-2000.0], [0.0], [0.0], [0.0], 0.5)
    assert r.loss == pytest.approx(1000.0)


def test_dpo_validation():
    with pytest.raises(ValueError, match="length mismatch"):
        dpo_loss([1.0], [1.0, 2.0], [1.0], [1.0], 0.1)
    with pytest.raises(ValueError):
        dpo_loss([], [], [], [], 0.1)
    with pytest.raises(ValueError):
        dpo_loss([1.0], [1.0], [1.0], [1.0], 0.0)
    with pytest.raises(ValueError):
        dpo_token_weights(PC, PR, RC, RR, BETA, reduction="max")


def test_dpo_token_weights_hand_values():
    # w_c,i = beta * sigmoid(-beta*h_i) / N, w_r,i = -w_c,i
    # pair 1: sigmoid(-1)  = 0.2689414213699951 -> 0.5 * 0.26894142 / 2 = 0.06723535534249878
    # pair 2: sigmoid(0.5) = 0.6224593312018546 -> 0.5 * 0.62245933 / 2 = 0.15561483280046365
    w = dpo_token_weights(PC, PR, RC, RR, BETA)
    assert w.chosen == pytest.approx([0.06723535534249878, 0.15561483280046365])
    assert w.rejected == pytest.approx([-0.06723535534249878, -0.15561483280046365])
    w_sum = dpo_token_weights(PC, PR, RC, RR, BETA, reduction="sum")
    assert w_sum.chosen == pytest.approx([0.13447071068499755, 0.3112296656009273])
    w_scaled = dpo_token_weights(PC, PR, RC, RR, BETA, scale=10.0)
    assert w_scaled.chosen == pytest.approx([0.6723535534249878, 1.5561483280046365])


def test_build_weighted_ce_datum():
    d = build_weighted_ce_datum([1, 2, 3], [7, 8], -0.25)
    assert d.model_input == [1, 2, 3, 7]
    assert d.loss_fn_inputs == {"target_tokens": [2, 3, 7, 8], "weights": [0.0, 0.0, -0.25, -0.25]}
    with pytest.raises(ValueError):
        build_weighted_ce_datum([], [7], 1.0)
    with pytest.raises(ValueError):
        build_weighted_ce_datum([1], [], 1.0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_ce_surrogate_gradient_equals_dpo_gradient(reduction):
    """grad of -sum(w * logp) over weighted-CE datums == grad of the DPO loss (torch autograd)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    vocab = 6
    # A tiny bigram "policy": logp(next | prev) = log_softmax(W[prev])[next]
    W = torch.randn(vocab, vocab, generator=gen, dtype=torch.float64, requires_grad=True)

    def token_logprobs(datum):
        inp = torch.tensor(datum.model_input)
        tgt = torch.tensor(datum.loss_fn_inputs["target_tokens"])
        return F.log_softmax(W[inp], dim=-1).gather(1, tgt[:, None]).squeeze(1)

    pairs = [  # (prompt, chosen, rejected): different lengths on purpose
        ([0, 1], [2, 3, 4], [5, 1]),
        ([3], [1], [2, 2, 0, 4]),
        ([4, 4, 2], [0, 5], [3]),
    ]
    ref = {"chosen": [-4.0, -2.5, -3.0], "rejected": [-3.5, -6.0, -1.0]}  # frozen reference, constants
    beta = 0.3

    # 1) the DPO loss through autograd, sequence logprob = sum over completion tokens
    def seq_lp(prompt, completion):
        d = build_weighted_ce_datum(prompt, completion, 1.0)
        lp = token_logprobs(d)
        return (lp * torch.tensor(d.loss_fn_inputs["weights"], dtype=torch.float64)).sum()

    pc = torch.stack([seq_lp(p, c) for p, c, _ in pairs])
    pr = torch.stack([seq_lp(p, r) for p, _, r in pairs])
    h = (pc - torch.tensor(ref["chosen"], dtype=torch.float64)) - (pr - torch.tensor(ref["rejected"], dtype=torch.float64))
    losses = -F.logsigmoid(beta * h)
    loss = losses.mean() if reduction == "mean" else losses.sum()
    (grad_dpo,) = torch.autograd.grad(loss, W)

    # the pure-Python loss agrees with torch's
    pure = dpo_loss(pc.tolist(), pr.tolist(), ref["chosen"], ref["rejected"], beta)
    expected = loss.item() if reduction == "mean" else loss.item() / len(pairs)
    assert pure.loss == pytest.approx(expected, rel=1e-12)

    # 2) the weighted cross_entropy surrogate with weights held constant
    w = dpo_token_weights(pc.tolist(), pr.tolist(), ref["chosen"], ref["rejected"], beta, reduction=reduction)
    data = []
    for (p, c, r), wc, wr in zip(pairs, w.chosen, w.rejected):
        data.append(build_weighted_ce_datum(p, c, wc))
        data.append(build_weighted_ce_datum(p, r, wr))
    surrogate = sum(
        -(token_logprobs(d) * torch.tensor(d.loss_fn_inputs["weights"], dtype=torch.float64)).sum() for d in data
    )
    (grad_surrogate,) = torch.autograd.grad(surrogate, W)

    assert grad_dpo.abs().max().item() > 1e-3  # a real, non-trivial gradient
    torch.testing.assert_close(grad_surrogate, grad_dpo, rtol=1e-10, atol=1e-12)
