import pytest

from kitchen.train.distill import (
    reverse_kl_advantages,
    teacher_kl,
    teacher_sample_to_sft_row,
    teacher_samples_to_sft_rows,
)
from kitchen.train.rl import build_rl_datum, completion_logprobs

STUDENT = [-1.0, -2.0, -0.5]
TEACHER = [-1.5, -1.0, -0.5]


def test_reverse_kl_advantages():
    # teacher - student = -0.5, 1.0, 0.0
    assert reverse_kl_advantages(STUDENT, TEACHER) == pytest.approx([-0.5, 1.0, 0.0])
    assert reverse_kl_advantages(STUDENT, TEACHER, kl_coef=2.0) == pytest.approx([-1.0, 2.0, 0.0])
    assert reverse_kl_advantages([], []) == []


def test_teacher_kl():
    # mean(student - teacher) = mean(0.5, -1.0, 0.0) = -1/6
    assert teacher_kl(STUDENT, TEACHER) == pytest.approx(-1 / 6)
    assert teacher_kl([-2.0, -2.0], [-3.0, -4.0]) == pytest.approx(1.5)
    assert teacher_kl([], []) == 0.0


def test_validation():
    with pytest.raises(ValueError, match="length mismatch"):
        reverse_kl_advantages([-1.0], [-1.0, -2.0])
    with pytest.raises(ValueError, match="None"):
        teacher_kl([-1.0], [None])


def test_on_policy_distill_datum():
    # teacher scored prompt + sample with compute_logprobs: first entry None, prompt of 2 tokens
    teacher_full = [None, -0.1, -1.5, -1.0, -0.5]
    teacher = completion_logprobs(teacher_full, prompt_len=2)
    assert teacher == TEACHER
    adv = reverse_kl_advantages(STUDENT, teacher)
    d = build_rl_datum([1, 2], [3, 4, 5], STUDENT, adv)
    assert d.loss_fn_inputs["advantages"] == pytest.approx([0.0, -0.5, 1.0, 0.0])
    assert d.loss_fn_inputs["logprobs"] == [0.0, -1.0, -2.0, -0.5]


def test_teacher_sample_to_sft_row():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    row = teacher_sample_to_sft_row(prompt, "  Hello!\n")
    assert row == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
    }
    assert len(prompt) == 2  # not mutated
    row["messages"][0]["content"] = "changed"
    assert prompt[0]["content"] == "Be brief."  # copied
    assert teacher_sample_to_sft_row(prompt, " x ", strip=False)["messages"][-1]["content"] == " x "


def test_teacher_sample_validation_and_batch():
    with pytest.raises(ValueError):
        teacher_sample_to_sft_row([], "x")
    with pytest.raises(ValueError):
        teacher_sample_to_sft_row([{"role": "user"}], "x")
    with pytest.raises(ValueError):
        teacher_sample_to_sft_row([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "x")
    with pytest.raises(ValueError):
        teacher_sample_to_sft_row([{"role": "user", "content": "q"}], None)  # type: ignore[arg-type]
    user = [{"role": "user", "content": "q"}]
    rows = teacher_samples_to_sft_rows([(user, "a"), (user, "   "), (user, "b")])
    assert [r["messages"][-1]["content"] for r in rows] == ["a", "b"]
    assert len(teacher_samples_to_sft_rows([(user, "  ")], skip_empty=False)) == 1
