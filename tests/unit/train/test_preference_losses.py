"""The preference family's losses: values by hand, and dL/dp against torch autograd of each formula."""

import math

import pytest

from kitchen.train.dpo import dpo_loss, dpo_token_weights
from kitchen.train.preference_losses import dpo_family, log_odds, orpo, simpo

torch = pytest.importorskip("torch")
F = torch.nn.functional

PC, PR, RC, RR = [-10.0, -5.0], [-12.0, -4.0], [-11.0, -5.0], [-11.0, -5.0]  # h = [2, -1]
LC, LR = [4.0, 2.0], [5.0, 1.0]
BETA = 0.5


def test_sigmoid_is_todays_dpo_bit_for_bit():
    r = dpo_family(PC, PR, RC, RR, BETA)
    old = dpo_loss(PC, PR, RC, RR, BETA)
    w = dpo_token_weights(PC, PR, RC, RR, BETA)
    assert r.loss == old.loss and r.accuracy == old.accuracy and r.margin == old.margin
    assert r.chosen_reward == old.chosen_reward and r.rejected_reward == old.rejected_reward
    assert r.weights() == (w.chosen, w.rejected)


def test_hand_values():
    # hinge: max(0, 1 - 0.5*2) = 0, max(0, 1 + 0.5) = 1.5 -> mean 0.75; grads: pair 1 at the kink -> 0
    r = dpo_family(PC, PR, RC, RR, BETA, "hinge")
    assert r.loss == pytest.approx(0.75)
    assert r.grad_chosen == pytest.approx([0.0, -0.25]) and r.grad_rejected == pytest.approx([0.0, 0.25])
    # ipo (mean logprobs): h' = 1/4 - (-1/5) = 0.45, and 0/2 - 1/1 = -1; target 1/(2*0.5) = 1
    r = dpo_family(PC, PR, RC, RR, BETA, "ipo", chosen_lengths=LC, rejected_lengths=LR)
    assert r.loss == pytest.approx(((0.45 - 1) ** 2 + (-1 - 1) ** 2) / 2)
    assert r.grad_chosen[0] == pytest.approx(2 * (0.45 - 1) / 2 / 4)
    # robust, eps = 0.1, pair 1 (beta*h = 1)
    eps = 0.1
    r = dpo_family(PC[:1], PR[:1], RC[:1], RR[:1], BETA, "robust", label_smoothing=eps)
    expect = (0.9 * math.log1p(math.exp(-1)) - 0.1 * math.log1p(math.exp(1))) / 0.8
    assert r.loss == pytest.approx(expect)
    # simpo: x = 0.5 * (-10/4 + 12/5) - 0.5 = -0.55
    r = simpo(PC[:1], PR[:1], LC[:1], LR[:1], BETA, 0.5)
    assert r.loss == pytest.approx(math.log1p(math.exp(0.55)))
    assert r.grad_chosen[0] == pytest.approx(-0.5 * (1 / (1 + math.exp(-0.55))) / 4)
    # orpo: NLL = 10/4; lo(m) = m - log(1 - e^m)
    m_c, m_r = -2.5, -2.4
    lo = lambda m: m - math.log(1 - math.exp(m))  # noqa: E731
    assert log_odds(m_c) == pytest.approx(lo(m_c))
    r = orpo(PC[:1], PR[:1], LC[:1], LR[:1], 0.1)
    assert r.loss == pytest.approx(2.5 + 0.1 * math.log1p(math.exp(-(lo(m_c) - lo(m_r)))))
    assert r.extra["nll_loss"] == pytest.approx(2.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_family(PC, PR, RC, RR, BETA, "hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_family(PC, PR, RC, RR, BETA, "robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="dpo_loss"):
        dpo_family(PC, PR, RC, RR, BETA, "nope")
    with pytest.raises(ValueError, match="lengths"):
        dpo_family(PC, PR, RC, RR, BETA, "ipo")


# ---------------------------------------------------------------- autograd of each formula

def _pairs():
    g = torch.Generator().manual_seed(0)
    n = 5
    pc = -(torch.rand(n, generator=g, dtype=torch.float64) * 20 + 1)
    pr = -(torch.rand(n, generator=g, dtype=torch.float64) * 20 + 1)
    rc = pc.detach() + torch.randn(n, generator=g, dtype=torch.float64)
    rr = pr.detach() + torch.randn(n, generator=g, dtype=torch.float64)
    lc = torch.randint(1, 12, (n,), generator=g).double()
    lr = torch.randint(1, 12, (n,), generator=g).double()
    return pc.requires_grad_(), pr.requires_grad_(), rc, rr, lc, lr


def _torch_loss(name, pc, pr, rc, rr, lc, lr, beta, eps, gamma, lam):
    h = (pc - rc) - (pr - rr)
    if name == "sigmoid":
        return ((1 - eps) * -F.logsigmoid(beta * h) + eps * -F.logsigmoid(-beta * h)).mean()
    if name == "hinge":
        return torch.relu(1 - beta * h).mean()
    if name == "robust":
        return (((1 - eps) * -F.logsigmoid(beta * h) - eps * -F.logsigmoid(-beta * h)) / (1 - 2 * eps)).mean()
    if name == "ipo":
        hn = (pc - rc) / lc - (pr - rr) / lr
        return ((hn - 1 / (2 * beta)) ** 2).mean()
    if name == "simpo":
        return (-F.logsigmoid(beta * (pc / lc - pr / lr) - gamma)).mean()
    if name == "orpo":
        mc, mr = pc / lc, pr / lr
        lo = lambda m: m - torch.log1p(-torch.exp(m))  # noqa: E731
        return -pc.sum() / lc.sum() + lam * (-F.logsigmoid(lo(mc) - lo(mr))).mean()
    raise AssertionError(name)


@pytest.mark.parametrize("name,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("robust", 0.2),
                                      ("robust", 0.0), ("ipo", 0.0), ("simpo", 0.0), ("orpo", 0.0)])
def test_gradient_equals_autograd(name, eps):
    pc, pr, rc, rr, lc, lr = _pairs()
    beta, gamma, lam = 0.7, 0.5, 0.3
    loss = _torch_loss(name, pc, pr, rc, rr, lc, lr, beta, eps, gamma, lam)
    gpc, gpr = torch.autograd.grad(loss, (pc, pr))
    args = (pc.tolist(), pr.tolist())
    if name == "simpo":
        r = simpo(*args, lc.tolist(), lr.tolist(), beta, gamma)
    elif name == "orpo":
        r = orpo(*args, lc.tolist(), lr.tolist(), lam)
    else:
        r = dpo_family(*args, rc.tolist(), rr.tolist(), beta, name, eps, lc.tolist(), lr.tolist())
    assert r.loss == pytest.approx(loss.item(), rel=1e-10)
    assert r.grad_chosen == pytest.approx(gpc.tolist(), rel=1e-9, abs=1e-12)
    assert r.grad_rejected == pytest.approx(gpr.tolist(), rel=1e-9, abs=1e-12)
    wc, wr = r.weights()  # the surrogate weights are -dL/dp
    assert wc == pytest.approx((-gpc).tolist(), rel=1e-9, abs=1e-12)
    assert wr == pytest.approx((-gpr).tolist(), rel=1e-9, abs=1e-12)
    assert max(abs(g) for g in r.grad_chosen + r.grad_rejected) > 1e-4
