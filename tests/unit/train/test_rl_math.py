import math
import subprocess
import sys
from typing import NamedTuple, Sequence

import pytest

from kitchen.train.rl import (
    _check_same_length,
    approx_kl,
    batch_group_advantages,
    build_rl_datum,
    completion_logprobs,
    count_degenerate_groups,
    entropy_estimate,
    group_advantages,
    is_degenerate_group,
    kl_penalty_advantages,
    ppo_loss_fn_config,
    rl_step_metrics,
)


# Reference losses (pure Python, Tinker's per-token summed semantics): test helpers only,
# the losses backends compute are kitchen.train.losses. clip_low / clip_high are epsilons.
def importance_sampling_loss(
    target_logprobs: Sequence[float], sampler_logprobs: Sequence[float], advantages: Sequence[float]
) -> float:
    """Tinker's ``importance_sampling`` loss: ``-sum(exp(t - s) * a)`` over tokens.

    Positions with advantage 0 (prompt positions) contribute nothing.
    """
    _check_same_length(target_logprobs=target_logprobs, sampler_logprobs=sampler_logprobs, advantages=advantages)
    return -sum(math.exp(t - s) * a for t, s, a in zip(target_logprobs, sampler_logprobs, advantages))


class PPOLoss(NamedTuple):
    loss: float
    clip_fraction: float


def ppo_loss(
    target_logprobs: Sequence[float],
    sampler_logprobs: Sequence[float],
    advantages: Sequence[float],
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> PPOLoss:
    """Tinker's ``ppo`` loss: ``-sum(min(r * a, clip(r, 1 - clip_low, 1 + clip_high) * a))``.

    ``r = exp(target - sampler)`` per token. ``clip_fraction`` is the fraction of tokens
    with a nonzero advantage whose clipped term is strictly the smaller one, i.e. the
    tokens whose gradient the clip switches off (0.0 when no token has an advantage).
    """
    _check_same_length(target_logprobs=target_logprobs, sampler_logprobs=sampler_logprobs, advantages=advantages)
    if clip_low < 0 or clip_high < 0 or clip_low >= 1:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    lo, hi = 1.0 - clip_low, 1.0 + clip_high
    total = 0.0
    active = clipped = 0
    for t, s, a in zip(target_logprobs, sampler_logprobs, advantages):
        r = math.exp(t - s)
        unclipped = r * a
        clipped_obj = min(max(r, lo), hi) * a
        total += min(unclipped, clipped_obj)
        if a != 0:
            active += 1
            if clipped_obj < unclipped:
                clipped += 1
    return PPOLoss(-total, clipped / active if active else 0.0)


def test_train_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import kitchen.train.rl, kitchen.train.dpo, kitchen.train.distill, kitchen.train.envs, kitchen.train.schedules\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- group advantages


def test_group_advantages_mean_centred():
    # mean 0.5
    assert group_advantages([1, 0, 0, 1]) == [0.5, -0.5, -0.5, 0.5]
    # mean 1
    assert group_advantages([2.0, 0.0, 1.0]) == [1.0, -1.0, 0.0]


def test_group_advantages_std_normalised():
    # [1,0,0,1]: population std 0.5 -> (r - 0.5) / (0.5 + 1e-6)
    adv = group_advantages([1, 0, 0, 1], normalize_std=True)
    assert adv == pytest.approx([0.5 / 0.500001, -0.5 / 0.500001, -0.5 / 0.500001, 0.5 / 0.500001])
    # [2,0,1]: std = sqrt(2/3) = 0.816496580927726
    adv = group_advantages([2, 0, 1], normalize_std=True, eps=0.0)
    assert adv == pytest.approx([1.224744871391589, -1.224744871391589, 0.0])


def test_degenerate_groups_give_zeros():
    assert group_advantages([1, 1, 1]) == [0.0, 0.0, 0.0]
    assert group_advantages([0.3] * 4, normalize_std=True) == [0.0] * 4
    assert group_advantages([]) == []
    assert group_advantages([5.0]) == [0.0]
    assert is_degenerate_group([0, 0]) and not is_degenerate_group([0, 1])
    assert count_degenerate_groups([[1, 1], [1, 0], [0, 0, 0]]) == 2
    advs, skipped = batch_group_advantages([[1, 1], [1, 0]])
    assert advs == [[0.0, 0.0], [0.5, -0.5]] and skipped == 1


# ---------------------------------------------------------------- datums


def test_build_rl_datum_layout():
    d = build_rl_datum([10, 11, 12], [20, 21], [-0.5, -1.5], 0.25)
    assert d.model_input == [10, 11, 12, 20]
    assert d.loss_fn_inputs["target_tokens"] == [11, 12, 20, 21]
    assert d.loss_fn_inputs["logprobs"] == [0.0, 0.0, -0.5, -1.5]
    assert d.loss_fn_inputs["advantages"] == [0.0, 0.0, 0.25, 0.25]
    assert d.loss_fn_inputs["weights"] == [0.0, 0.0, 1.0, 1.0]
    assert all(len(v) == d.length for v in d.loss_fn_inputs.values())
    assert d.num_loss_tokens() == 2


def test_build_rl_datum_single_token_prompt_and_per_token_advantages():
    d = build_rl_datum([1], [5, 6, 7], [-1.0, -2.0, -3.0], [0.1, 0.2, 0.3])
    assert d.model_input == [1, 5, 6]
    assert d.loss_fn_inputs["target_tokens"] == [5, 6, 7]
    assert d.loss_fn_inputs["advantages"] == [0.1, 0.2, 0.3]
    assert d.loss_fn_inputs["logprobs"] == [-1.0, -2.0, -3.0]


def test_build_rl_datum_validation():
    with pytest.raises(ValueError):
        build_rl_datum([], [1], [-1.0], 1.0)
    with pytest.raises(ValueError):
        build_rl_datum([1], [], [], 1.0)
    with pytest.raises(ValueError, match="length mismatch"):
        build_rl_datum([1], [2, 3], [-1.0], 1.0)
    with pytest.raises(ValueError, match="length mismatch"):
        build_rl_datum([1], [2, 3], [-1.0, -1.0], [1.0])


def test_completion_logprobs():
    assert completion_logprobs([None, -1.0, -2.0, -3.0, -4.0], 2) == [-2.0, -3.0, -4.0]
    assert completion_logprobs([-1.0, -2.0, -3.0, -4.0], 2, aligned="targets") == [-2.0, -3.0, -4.0]
    with pytest.raises(ValueError):
        completion_logprobs([None, -1.0], 0)
    with pytest.raises(ValueError):
        completion_logprobs([None, -1.0], 1, aligned="other")


# ---------------------------------------------------------------- losses


def test_importance_sampling_loss():
    t = [-1.0, -2.0, -0.5]
    s = [-1.0, -1.5, -0.5]
    a = [0.5, -1.0, 0.0]
    # -(e^0 * 0.5 + e^-0.5 * -1.0 + 0) = -(0.5 - 0.6065306597126334) = 0.1065306597126334
    assert importance_sampling_loss(t, s, a) == pytest.approx(0.1065306597126334)
    with pytest.raises(ValueError):
        importance_sampling_loss([0.0], [0.0, 0.0], [1.0])


def test_ppo_loss_clipping():
    s = [-1.0] * 5 + [0.0]
    ratios = [1.5, 0.5, 0.5, 1.5, 1.1]
    t = [-1.0 + math.log(r) for r in ratios] + [-3.0]  # last: a prompt position
    a = [1.0, 1.0, -1.0, -1.0, 2.0, 0.0]
    # token 1: r=1.5, a=+1 -> min(1.5, 1.2)   =  1.2  (clipped)
    # token 2: r=0.5, a=+1 -> min(0.5, 0.8)   =  0.5
    # token 3: r=0.5, a=-1 -> min(-0.5, -0.8) = -0.8  (clipped)
    # token 4: r=1.5, a=-1 -> min(-1.5, -1.2) = -1.5
    # token 5: r=1.1, a=+2 -> min(2.2, 2.2)   =  2.2
    # prompt position: a=0 -> 0, not counted
    # objective 1.6 -> loss -1.6; clip fraction 2/5
    loss, clip_fraction = ppo_loss(t, s, a)
    assert loss == pytest.approx(-1.6)
    assert clip_fraction == pytest.approx(0.4)


def test_ppo_asymmetric_clip_and_on_policy_equals_is():
    # r=1.5, a=1 with clip_high 0.3 -> 1.3; r=0.5, a=-1 with clip_low 0.1 -> min(-0.5, -0.9) = -0.9
    t = [math.log(1.5), math.log(0.5)]
    res = ppo_loss(t, [0.0, 0.0], [1.0, -1.0], clip_low=0.1, clip_high=0.3)
    assert res.loss == pytest.approx(-(1.3 - 0.9))
    assert res.clip_fraction == 1.0
    # on-policy (ratio 1): PPO == IS == -sum(a)
    lp = [-0.3, -1.2, -2.0]
    adv = [0.5, -0.25, 1.0]
    assert ppo_loss(lp, lp, adv).loss == pytest.approx(-1.25)
    assert importance_sampling_loss(lp, lp, adv) == pytest.approx(-1.25)
    assert ppo_loss(lp, lp, adv).clip_fraction == 0.0
    assert ppo_loss([], [], []) == (0.0, 0.0)


def test_ppo_loss_fn_config():
    assert ppo_loss_fn_config() == pytest.approx({"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    assert ppo_loss_fn_config(0.1, 0.28) == pytest.approx({"clip_low_threshold": 0.9, "clip_high_threshold": 1.28})


# ---------------------------------------------------------------- KL / entropy


def test_kl_penalty_advantages():
    # diffs s - r = 0.5, -1.0 -> a - 0.1 * diff = 0.45, 0.6
    assert kl_penalty_advantages([0.5, 0.5], [-1.0, -2.0], [-1.5, -1.0], 0.1) == pytest.approx([0.45, 0.6])
    # whole-datum lists with a mask: the prompt position keeps its advantage
    out = kl_penalty_advantages([0.0, 0.5, 0.5], [0.0, -1.0, -2.0], [-3.0, -1.5, -1.0], 0.1, mask=[0, 1, 1])
    assert out == pytest.approx([0.0, 0.45, 0.6])
    assert kl_penalty_advantages([0.5], [-1.0], [-1.5], 0.0) == [0.5]
    with pytest.raises(ValueError):
        kl_penalty_advantages([0.5], [-1.0, -1.0], [-1.5], 0.1)


def test_approx_kl_and_entropy():
    # mean(0.5, -1.0) = -0.25
    assert approx_kl([-1.0, -2.0], [-1.5, -1.0]) == pytest.approx(-0.25)
    assert approx_kl([0.0, -1.0, -2.0], [-9.0, -1.5, -1.0], mask=[0, 1, 1]) == pytest.approx(-0.25)
    assert approx_kl([], []) == 0.0
    # -mean(-0.5, -1.5, -1.0) = 1.0
    assert entropy_estimate([-0.5, -1.5, -1.0]) == pytest.approx(1.0)
    assert entropy_estimate([0.0, -0.5, -1.5], mask=[0, 1, 1]) == pytest.approx(1.0)
    assert entropy_estimate([]) == 0.0


# ---------------------------------------------------------------- metrics


def test_rl_step_metrics():
    rewards = [[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    correct = [[bool(r) for r in g] for g in rewards]
    counts = [[3, 4, 5, 6], [2, 2, 2, 2], [1, 1, 1, 1]]
    m = rl_step_metrics(rewards, correct, counts)
    assert m["reward_mean"] == pytest.approx(0.5)  # 6 / 12
    assert m["reward_std"] == pytest.approx(0.5)  # half 0, half 1
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["sampled_tokens"] == 30.0  # 18 + 8 + 4
    assert m["sampled_tokens_mean"] == pytest.approx(2.5)
    assert m["frac_degenerate_groups"] == pytest.approx(2 / 3)
    assert m["num_groups"] == 3.0 and m["num_samples"] == 12.0
    # flat counts are accepted too
    assert rl_step_metrics(rewards, correct, [3, 4, 5, 6, 2, 2, 2, 2, 1, 1, 1, 1])["sampled_tokens"] == 30.0


def test_rl_step_metrics_with_logprobs():
    m = rl_step_metrics(
        [[1.0, 0.0]],
        sampler_logprobs=[[-1.0, -2.0], [-0.5]],
        reference_logprobs=[[-1.5, -1.0], [-0.5]],
    )
    assert m["accuracy"] == 0.0
    assert m["entropy"] == pytest.approx(3.5 / 3)
    assert m["kl_ref"] == pytest.approx((0.5 - 1.0 + 0.0) / 3)
    assert m["frac_degenerate_groups"] == 0.0
    with pytest.raises(ValueError):
        rl_step_metrics([[1.0, 0.0]], [[True]])
