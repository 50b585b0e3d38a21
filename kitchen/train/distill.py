"""Distillation math.

On-policy distillation (as in tinker-cookbook): the student samples, the teacher scores
the student's tokens (``compute_logprobs`` over prompt + sample), and each sampled token
gets the advantage ``kl_coef * (teacher_lp - student_lp)``, i.e. minus the per-token
reverse-KL estimate. Training on those advantages with the ``importance_sampling`` loss
(datums from ``kitchen.train.rl.build_rl_datum``) minimises KL(student || teacher).

Off-policy distillation: the teacher samples completions and they become plain SFT rows.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from kitchen.train.messages import message_problem


def _check_pair(student_logprobs: Sequence[float], teacher_logprobs: Sequence[float]) -> int:
    if len(student_logprobs) != len(teacher_logprobs):
        raise ValueError(
            f"length mismatch: student_logprobs={len(student_logprobs)}, teacher_logprobs={len(teacher_logprobs)}"
        )
    if any(x is None for x in teacher_logprobs) or any(x is None for x in student_logprobs):
        raise ValueError("logprobs contain None (slice off the prompt: kitchen.train.rl.completion_logprobs)")
    return len(student_logprobs)


def reverse_kl_advantages(
    student_logprobs: Sequence[float], teacher_logprobs: Sequence[float], kl_coef: float = 1.0
) -> list[float]:
    """Per sampled token: ``-kl_coef * (student_lp - teacher_lp) = kl_coef * (teacher_lp - student_lp)``.

    Both lists hold the logprobs of the student's sampled tokens only (one entry each).
    """
    _check_pair(student_logprobs, teacher_logprobs)
    return [kl_coef * (t - s) for s, t in zip(student_logprobs, teacher_logprobs)]


def teacher_kl(student_logprobs: Sequence[float], teacher_logprobs: Sequence[float]) -> float:
    """Per-token reverse KL(student || teacher), sample estimate: ``mean(student_lp - teacher_lp)``.

    Unbiased when the tokens were sampled from the student; a batch value can be
    negative. 0.0 when there are no tokens.
    """
    n = _check_pair(student_logprobs, teacher_logprobs)
    if n == 0:
        return 0.0
    return sum(s - t for s, t in zip(student_logprobs, teacher_logprobs)) / n


def _check_prompt(messages: Any) -> list[dict[str, Any]]:
    """The prompt as plain dicts: a valid message list (:func:`message_problem`) that does not end with the assistant."""
    problem = message_problem(messages)
    if problem:
        raise ValueError(f"bad prompt messages: {problem}")
    out = [dict(m) for m in messages]
    if out[-1]["role"] == "assistant":
        raise ValueError("prompt messages end with an assistant turn; the teacher's completion would follow it")
    return out


def teacher_sample_to_sft_row(
    prompt_messages: Sequence[Mapping[str, Any]], completion_text: str, strip: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """``{"messages": prompt_messages + [{"role": "assistant", "content": completion}]}``.

    The prompt messages are copied, not mutated. ``strip`` trims surrounding whitespace
    of the completion. Raises ValueError on malformed messages or a non-string completion.
    """
    messages = _check_prompt(prompt_messages)
    if not isinstance(completion_text, str):
        raise ValueError(f"completion_text must be a string, got {type(completion_text).__name__}")
    content = completion_text.strip() if strip else completion_text
    return {"messages": messages + [{"role": "assistant", "content": content}]}


def teacher_samples_to_sft_rows(
    samples: Iterable[tuple[Sequence[Mapping[str, Any]], str]], strip: bool = True, skip_empty: bool = True
) -> list[dict[str, list[dict[str, Any]]]]:
    """Many ``(prompt_messages, completion_text)`` pairs to SFT rows; empty completions are dropped
    when ``skip_empty`` (after stripping if ``strip``)."""
    rows = []
    for prompt_messages, completion_text in samples:
        row = teacher_sample_to_sft_row(prompt_messages, completion_text, strip=strip)
        if skip_empty and not row["messages"][-1]["content"].strip():
            continue
        rows.append(row)
    return rows
