"""The GRPO family's math (kitchen.train.grpo) against hand computations and the papers' formulas.

The exact-gradient path (``policy_objective``) is checked against torch autograd of the
formulas, and of kitchen's own ``importance_sampling`` / ``ppo`` losses on scaled
advantages (the path the built-in loss names take), so both routes train the same gradient.
"""

from __future__ import annotations

import math

import pytest

from kitchen.train.grpo import (
    PRESETS,
    ObjectiveConfig,
    SequenceInputs,
    advantages,
    aggregation_scales,
    apply_preset,
    kl_grad,
    kl_reward_advantages,
    kl_value,
    overlong_penalty,
    policy_objective,
    rloo_advantages,
    whiten,
)
from kitchen.train.rl import group_advantages, kl_penalty_advantages

torch = pytest.importorskip("torch")


# --------------------------------------------------------------------------- advantages


def test_group_mean_is_todays_advantage_bit_for_bit() -> None:
    groups = [[1.0, 0.0, 0.0, 1.0], [0.3, 0.3], [2.0, 0.5, 1.0]]
    assert advantages(groups, "group_mean") == [group_advantages(g) for g in groups]


def test_group_mean_std_by_hand() -> None:
    # mean 0.5, population std 0.5: (r - 0.5) / (0.5 + 1e-6)
    a = advantages([[1, 0, 0, 1]], "group_mean_std")[0]
    assert a == pytest.approx([0.5 / 0.500001, -0.5 / 0.500001, -0.5 / 0.500001, 0.5 / 0.500001])
    assert advantages([[0.7, 0.7, 0.7]], "group_mean_std") == [[0.0, 0.0, 0.0]]


def test_rloo_is_reward_minus_the_mean_of_the_others() -> None:
    r = [1.0, 0.0, 0.0, 1.0]
    by_hand = [r[i] - sum(r[j] for j in range(4) if j != i) / 3 for i in range(4)]  # Ahmadian et al. eq. 7
    assert rloo_advantages(r) == pytest.approx(by_hand)
    assert by_hand == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert rloo_advantages([3.0, 1.0, 2.0]) == pytest.approx([1.5, -1.5, 0.0])  # 3 - 1.5, 1 - 2.5, 2 - 2
    assert rloo_advantages([1.0]) == [0.0] and rloo_advantages([1.0, 1.0]) == [0.0, 0.0]


def test_reinforce_pp_whitens_the_group_centred_advantages_over_tokens() -> None:
    # centred [[0.5, -0.5]]; token weights 1 and 3: mean -0.25, var (0.75^2 + 3 * 0.25^2) / 4 = 0.1875
    a = advantages([[1.0, 0.0]], "reinforce_pp", lengths=[[1, 3]])[0]
    std = math.sqrt(0.1875)
    assert a == pytest.approx([0.75 / std, -0.25 / std], rel=1e-6)
    # equal lengths: mean 0, std 0.5 over [[.5, -.5], [0, 0]] weighted 2 tokens each -> var 0.125
    b = advantages([[1.0, 0.0], [1.0, 1.0]], "reinforce_pp", lengths=[[2, 2], [2, 2]])
    assert b[0] == pytest.approx([0.5 / math.sqrt(0.125), -0.5 / math.sqrt(0.125)], rel=1e-6)
    assert b[1] == pytest.approx([0.0, 0.0])
    assert whiten([[0.0, 0.0]]) == [[0.0, 0.0]]  # no spread: no signal


def test_unknown_advantage_is_refused() -> None:
    with pytest.raises(ValueError, match="group_mean"):
        advantages([[1, 0]], "ppo")


# --------------------------------------------------------------------------- aggregation, KL, overlong


def test_aggregation_scales_by_hand() -> None:
    assert aggregation_scales([2, 3, 5], "token_sum") == [1.0, 1.0, 1.0]
    assert aggregation_scales([2, 3, 5], "token_mean") == pytest.approx([0.1, 0.1, 0.1])  # 1 / 10 tokens
    assert aggregation_scales([2, 3, 5], "sequence_mean") == pytest.approx([1 / 6, 1 / 9, 1 / 15])  # 1 / (3 * n_i)


def test_kl_estimators_by_hand_and_their_gradients() -> None:
    lp, ref = -1.0, -2.0  # d = ref - lp = -1
    assert kl_value(lp, ref, "k1") == pytest.approx(1.0)
    assert kl_value(lp, ref, "k2") == pytest.approx(0.5)
    assert kl_value(lp, ref, "k3") == pytest.approx(math.exp(-1) - 1 + 1)
    assert [kl_grad(lp, ref, k) for k in ("k1", "k2", "k3")] == pytest.approx([1.0, 1.0, 1 - math.exp(-1)])
    h = 1e-6
    for k in ("k1", "k2", "k3"):
        for lp_, ref_ in ((-1.0, -2.0), (-0.3, -0.1), (-2.0, -2.0)):
            numeric = (kl_value(lp_ + h, ref_, k) - kl_value(lp_ - h, ref_, k)) / (2 * h)
            assert kl_grad(lp_, ref_, k) == pytest.approx(numeric, abs=1e-6)
    assert kl_value(-0.3, -0.3, "k3") == 0.0 and kl_value(-0.3, -1.7, "k3") > 0  # k3 >= 0


def test_k1_in_the_reward_is_todays_kl_penalty() -> None:
    adv, s, r = [0.5, 0.5, 0.5], [-1.0, -0.2, -3.0], [-1.5, -0.1, -2.0]
    assert kl_reward_advantages(adv, s, r, 0.1, "k1") == kl_penalty_advantages(adv, s, r, 0.1)
    assert kl_reward_advantages([0.0], [-1.0], [-2.0], 0.1, "k3") == pytest.approx([-0.1 * math.exp(-1)])


def test_overlong_soft_punishment_is_dapo_eq_13() -> None:
    # L_max = 20, L_cache = 5: no penalty up to 15, a linear ramp to -1 at 20
    assert [overlong_penalty(n, 20, 5) for n in (1, 15, 16, 18, 20, 21)] == pytest.approx([0, 0, -0.2, -0.6, -1.0, -1.0])
    assert overlong_penalty(18, 20, 5, factor=0.5) == pytest.approx(-0.3)
    with pytest.raises(ValueError):
        overlong_penalty(3, 4, 8)


# --------------------------------------------------------------------------- the objective and its gradient


def _data():
    lp = [[-1.0, -0.5, -2.0], [-0.3, -1.2]]
    slp = [[-1.1, -0.2, -2.5], [-0.3, -1.0]]
    adv = [[1.0, 1.0, 1.0], [-0.5, -0.7]]
    ref = [[-1.3, -0.6, -1.5], [-0.2, -1.4]]
    return lp, slp, adv, ref


def _objective(loss_fn, level="token", clip=(0.2, 0.2), scales=(1.0, 1.0), kl=0.0, est="k1"):
    lp, slp, adv, ref = _data()
    seqs = [SequenceInputs(lp[i], slp[i], adv[i], scales[i], ref[i] if kl else None) for i in range(2)]
    return policy_objective(seqs, ObjectiveConfig(loss_fn, level, clip[0], clip[1], kl, est))


def _torch_grads(per_token_loss, scales=(1.0, 1.0)):
    lp, slp, adv, ref = _data()
    total, leaves = 0.0, []
    for i in range(2):
        x = torch.tensor(lp[i], dtype=torch.float64, requires_grad=True)
        leaves.append(x)
        total = total + scales[i] * per_token_loss(
            x, torch.tensor(slp[i], dtype=torch.float64), torch.tensor(adv[i], dtype=torch.float64),
            torch.tensor(ref[i], dtype=torch.float64)).sum()
    total.backward()
    return float(total), [x.grad.tolist() for x in leaves]


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo"])
@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.2, 0.2), (1 / 6, 1 / 4)])
def test_token_level_gradient_equals_kitchens_builtin_loss_on_scaled_advantages(loss_fn, scales) -> None:
    """The built-in route (loss on c_i * A) and the exact route (policy_objective) train one gradient."""
    from kitchen.train import losses

    def builtin(x, s, a, _ref, c):
        out = losses.importance_sampling(x, s, c * a) if loss_fn == "importance_sampling" else losses.ppo(x, s, c * a, 0.8, 1.2)
        return out.loss

    lp, slp, adv, ref = _data()
    grads, total = [], 0.0
    for i in range(2):
        x = torch.tensor(lp[i], dtype=torch.float64, requires_grad=True)
        loss = builtin(x, torch.tensor(slp[i], dtype=torch.float64), torch.tensor(adv[i], dtype=torch.float64), None, scales[i])
        loss.backward()
        grads.append(x.grad.tolist())
        total += float(loss.detach())
    got = _objective(loss_fn, scales=scales)
    assert got.loss == pytest.approx(total, rel=1e-12)
    for g, want in zip(got.grads, grads):
        assert g == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_ppo_clip_low_and_high_are_epsilons_around_one() -> None:
    # token 1 of seq 0: r = exp(-0.3) = 0.74 < 1 - 0.2 with A > 0 -> unclipped branch is the min (gradient kept);
    # with A > 0 and r > 1 + clip_high the clipped branch is the min: seq 0 token 2, r = exp(0.5) = 1.65
    tight = _objective("ppo", clip=(0.2, 0.2))
    loose = _objective("ppo", clip=(0.2, 0.7))  # 1.65 < 1.7: no longer clipped
    assert tight.grads[0][2] == 0.0 and loose.grads[0][2] == pytest.approx(-math.exp(0.5))
    assert tight.metrics["clip_fraction"] > loose.metrics["clip_fraction"]


def test_cispo_is_the_detached_clipped_weight_times_the_log_prob() -> None:
    def cispo(x, s, a, _ref):
        w = (x - s).exp().clamp(1 - 1.0, 1 + 0.28).detach()  # MiniMax-M1 eq. 4: no lower bound
        return -(w * a * x)

    want_loss, want = _torch_grads(cispo)
    got = _objective("cispo", clip=(1.0, 0.28))
    assert got.loss == pytest.approx(want_loss)
    for g, w in zip(got.grads, want):
        assert g == pytest.approx(w)
    # by hand: seq 0 token 2 has r = exp(0.5) = 1.65 -> weight 1.28; gradient -1.28 * A = -1.28
    assert got.grads[0][2] == pytest.approx(-1.28)


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo"])
def test_gspo_sequence_ratio_matches_the_papers_objective(loss_fn) -> None:
    def gspo(x, s, a, _ref):
        ratio = (x - s).mean().exp()  # Zheng et al. 2025 eq. 7: s_i = exp(mean log ratio)
        if loss_fn == "importance_sampling":
            return -(ratio * a)
        return -torch.minimum(ratio * a, ratio.clamp(1 - 0.2, 1 + 0.2) * a)

    want_loss, want = _torch_grads(gspo, scales=(0.5, 0.5))
    got = _objective(loss_fn, level="sequence", scales=(0.5, 0.5))
    assert got.loss == pytest.approx(want_loss)
    for g, w in zip(got.grads, want):
        assert g == pytest.approx(w)


def test_gspo_by_hand() -> None:
    # log ratios +0.1 and -0.1: s = exp(0) = 1; loss -(1 * 1 + 1 * 1) = -2; d/dlp_t = -2 * s / 2 = -1
    out = policy_objective([SequenceInputs([-1.0, -1.0], [-1.1, -0.9], [1.0, 1.0])], ObjectiveConfig("ppo", "sequence"))
    assert out.loss == pytest.approx(-2.0) and out.grads == [pytest.approx([-1.0, -1.0])]


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_in_the_loss_adds_kl_coef_times_the_estimator(est) -> None:
    def with_kl(x, s, a, ref):
        d = ref - x
        k = {"k1": -d, "k2": 0.5 * d * d, "k3": d.exp() - 1 - d}[est]
        return -((x - s).exp() * a) + 0.04 * k

    want_loss, want = _torch_grads(with_kl)
    got = _objective("importance_sampling", kl=0.04, est=est)
    assert got.loss == pytest.approx(want_loss)
    for g, w in zip(got.grads, want):
        assert g == pytest.approx(w)
    assert "kl_loss" in got.metrics


def test_cispo_has_no_sequence_level() -> None:
    with pytest.raises(ValueError, match="cispo"):
        _objective("cispo", level="sequence")


# --------------------------------------------------------------------------- presets


def test_preset_fills_the_keys_at_their_defaults_and_refuses_a_contradiction() -> None:
    defaults = {"loss_fn": "importance_sampling", "advantage": "group_mean", "aggregation": "token_sum", "clip_low": 0.2,
                "clip_high": 0.2, "dynamic_sampling": False, "overlong": "none", "importance_level": "token",
                "kl_coef": 0.0, "kl_estimator": "k1", "kl_in": "reward"}
    values, conflicts = apply_preset("dapo", dict(defaults), defaults)
    assert not conflicts
    assert {k: values[k] for k in PRESETS["dapo"]} == PRESETS["dapo"]
    _, conflicts = apply_preset("dapo", {**defaults, "clip_high": 0.5}, defaults)
    assert conflicts and "clip_high" in conflicts[0]
    values, _ = apply_preset("grpo", {**defaults, "kl_coef": 0.04}, defaults)
    assert values["kl_estimator"] == "k3" and values["kl_in"] == "loss"
    values, _ = apply_preset("grpo", dict(defaults), defaults)
    assert values["kl_in"] == "reward"  # no KL term: the KL keys stay inert
