import math

import pytest

from kitchen.train.schedules import SCHEDULES, lr_at, lr_multiplier, lr_sequence, validate_schedule


def test_constant_no_warmup():
    assert lr_at(0, 10, 1e-3) == 1e-3
    assert lr_at(9, 10, 1e-3) == 1e-3


def test_linear_warmup_reaches_base_on_last_warmup_step():
    # warmup 4: (step + 1) / 4 -> 0.25, 0.5, 0.75, 1.0, then constant 1.0
    assert lr_sequence(6, 1.0, "constant", warmup_steps=4) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 100, 2e-4, "cosine", warmup_steps=10) == pytest.approx(2e-5)
    assert lr_at(9, 100, 2e-4, "cosine", warmup_steps=10) == pytest.approx(2e-4)


def test_linear_decay():
    # progress = step / 10; lr = 1 - progress
    assert lr_at(0, 10, 1.0, "linear") == 1.0
    assert lr_at(5, 10, 1.0, "linear") == pytest.approx(0.5)
    assert lr_at(9, 10, 1.0, "linear") == pytest.approx(0.1)  # last step taken
    assert lr_at(10, 10, 1.0, "linear") == pytest.approx(0.0)  # one past the end: the floor
    assert lr_at(20, 10, 1.0, "linear") == pytest.approx(0.0)  # clamped


def test_linear_decay_to_min_ratio():
    # 1 - (1 - 0.1) * 0.5 = 0.55
    assert lr_at(5, 10, 1.0, "linear", min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_at(10, 10, 1.0, "linear", min_lr_ratio=0.1) == pytest.approx(0.1)


def test_linear_with_warmup_boundaries():
    # warmup 2, total 10 -> 8 decay steps
    assert lr_at(0, 10, 1.0, "linear", warmup_steps=2) == pytest.approx(0.5)
    assert lr_at(1, 10, 1.0, "linear", warmup_steps=2) == pytest.approx(1.0)
    assert lr_at(2, 10, 1.0, "linear", warmup_steps=2) == pytest.approx(1.0)  # first decay step, progress 0
    assert lr_at(6, 10, 1.0, "linear", warmup_steps=2) == pytest.approx(0.5)  # 1 - 4/8
    assert lr_at(9, 10, 1.0, "linear", warmup_steps=2) == pytest.approx(0.125)  # 1 - 7/8


def test_cosine_decay():
    assert lr_at(0, 10, 1.0, "cosine") == pytest.approx(1.0)
    # 0.5 * (1 + cos(0.2 pi)) = 0.5 * (1 + 0.8090169943749475)
    assert lr_at(2, 10, 1.0, "cosine") == pytest.approx(0.9045084971874737)
    assert lr_at(5, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(10, 10, 1.0, "cosine") == pytest.approx(0.0, abs=1e-15)
    # min ratio 0.2: 0.2 + 0.8 * 0.5 = 0.6 at the midpoint, 0.2 at the end
    assert lr_at(5, 10, 1.0, "cosine", min_lr_ratio=0.2) == pytest.approx(0.6)
    assert lr_at(10, 10, 1.0, "cosine", min_lr_ratio=0.2) == pytest.approx(0.2)


def test_cosine_with_warmup():
    # warmup 2, total 6 -> decay over 4 steps; step 4 is the midpoint
    seq = lr_sequence(6, 1.0, "cosine", warmup_steps=2)
    assert seq[0] == pytest.approx(0.5)
    assert seq[1] == pytest.approx(1.0)
    assert seq[2] == pytest.approx(1.0)
    assert seq[4] == pytest.approx(0.5)
    assert seq[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))


def test_warmup_longer_than_run():
    assert lr_sequence(3, 1.0, "linear", warmup_steps=5) == pytest.approx([0.2, 0.4, 0.6])
    assert lr_multiplier(7, 3, "linear", warmup_steps=5) == 1.0


def test_base_lr_scales():
    assert lr_at(5, 10, 3e-4, "linear") == pytest.approx(1.5e-4)


def test_validation():
    assert SCHEDULES == ("constant", "linear", "cosine")
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        lr_at(0, 10, 1.0, "cosin")
    with pytest.raises(ValueError):
        validate_schedule("exponential")
    with pytest.raises(ValueError):
        lr_at(-1, 10, 1.0)
    with pytest.raises(ValueError):
        lr_at(0, 0, 1.0)
    with pytest.raises(ValueError):
        lr_at(0, 10, 1.0, warmup_steps=-1)
    with pytest.raises(ValueError):
        lr_at(0, 10, 1.0, min_lr_ratio=1.5)
    with pytest.raises(ValueError):
        lr_at(0, 10, -1.0)
