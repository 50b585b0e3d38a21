"""KTO: values by hand, the batch KL estimate, and dL/dp against torch autograd."""

import math

import pytest

from kitchen.train.kto import kl_estimate, kto_loss, mismatched

torch = pytest.importorskip("torch")


def test_hand_values():
    # r = [1, -2], z0 = 0.5, beta = 0.5: desirable 1 - σ(0.25), undesirable 1 - σ(0.5 * (0.5 + 2))
    r = kto_loss([-3.0, -6.0], [-4.0, -4.0], [True, False], 0.5, 0.5, 2.0, 1.0)
    s1, s2 = 1 / (1 + math.exp(-0.25)), 1 / (1 + math.exp(-1.25))
    assert r.loss == pytest.approx((2.0 * (1 - s1) + (1 - s2)) / 2)
    assert r.grads == pytest.approx([-2.0 * 0.5 * s1 * (1 - s1) / 2, 0.5 * s2 * (1 - s2) / 2])
    assert r.desirable == 1 and r.desirable_reward == pytest.approx(0.5) and r.undesirable_reward == pytest.approx(-1.0)
    assert r.weights() == pytest.approx([-g for g in r.grads])


def test_kl_estimate_is_clamped_and_mismatched():
    assert kl_estimate([-1.0, -3.0], [-2.0, -2.0]) == 0.0  # mean 0 -> 0
    assert kl_estimate([-1.0, -1.0], [-2.0, -1.5]) == pytest.approx(0.75)
    assert kl_estimate([-5.0], [-1.0]) == 0.0  # negative mean clamped
    assert kl_estimate([], []) == 0.0
    assert mismatched(3) == [(0, 1), (1, 2), (2, 0)] and mismatched(1) == []


def test_gradient_equals_autograd():
    g = torch.Generator().manual_seed(0)
    p = (-(torch.rand(6, generator=g, dtype=torch.float64) * 10 + 1)).requires_grad_()
    ref = p.detach() + torch.randn(6, generator=g, dtype=torch.float64)
    labels = [True, False, True, True, False, False]
    lab = torch.tensor(labels)
    beta, wd, wu, z0 = 0.3, 1.5, 0.7, 0.2
    r = p - ref
    losses = torch.where(lab, wd * (1 - torch.sigmoid(beta * (r - z0))), wu * (1 - torch.sigmoid(beta * (z0 - r))))
    loss = losses.mean()
    (grad,) = torch.autograd.grad(loss, p)
    out = kto_loss(p.tolist(), ref.tolist(), labels, z0, beta, wd, wu)
    assert out.loss == pytest.approx(loss.item(), rel=1e-12)
    assert out.grads == pytest.approx(grad.tolist(), rel=1e-10)
    assert out.weights() == pytest.approx((-grad).tolist(), rel=1e-10)
