"""Distillation stages: a student learns from a frozen teacher.

The teacher is ``sampling_client(base_model=spec.teacher)``: a model alias, a path, or a
kitchen RUN_DIR (its ``final/`` weights); default ``smollm2-135m-instruct``.

* on_policy (default): the student samples (current weights), the teacher scores the
  student's tokens (``compute_logprobs`` over prompt + sample), each token gets the
  advantage ``kl_coef * (teacher_lp - student_lp)`` (minus the per-token reverse KL), and
  ``importance_sampling`` (spec.loss_fn) minimises KL(student || teacher). Needs the
  teacher to share the student's tokenizer (checked when the backend can tell).
* off_policy: the teacher samples completions, which become SFT rows trained with
  ``cross_entropy`` (any tokenizer: the teacher's text is re-rendered for the student).

Prompts are the user turns of the chat dataset (``dataset`` / ``test_dataset``); each
step takes ``groups_per_batch`` of them (a pure function of seed and step) and samples
``group_size`` completions per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kitchen.engine.context import Context
from kitchen.engine.pipeline import StepOutput
from kitchen.engine.stage import Stage
from kitchen.errors import ConfigError, DataError, KitchenError
from kitchen.evaluators import EvalEnv, EvalResult
from kitchen.ports.types import SampleResult
from kitchen.stages.data import ChatData
from kitchen.stages.reinforcement import emit_rollouts
from kitchen.stages.rollouts import (
    Group,
    Rollouts,
    RolloutStage,
    Sample,
    loss_fn_config_for,
    require_max_steps,
    sample_params,
    sampling_seed,
    score_tokens,
)
from kitchen.stages.session import Session, make_renderer
from kitchen.telemetry import events as ev
from kitchen.train.messages import prompt_part

DEFAULT_TEACHER = "smollm2-135m-instruct"
_PROBE = "Chef's note: 1 1/2 cups is 360 ml. Happy cooking! <|im_end|>"


@dataclass
class DistillState:
    teacher: Any = None  # sampler over the frozen teacher
    teacher_renderer: Any = None  # the student's renderer unless the tokenizers differ (off-policy)
    prompts: list[list[dict]] = field(default_factory=list)
    eval_prompts: list[list[dict]] = field(default_factory=list)
    prompt_plan: Any = None  # a BatchPlan over prompts


def teacher_name(spec) -> str:
    return spec.teacher or DEFAULT_TEACHER


def kl_coef(spec) -> float:
    """The reverse-KL advantage scale: kl_coef, or 1.0 when it is 0 (0 would teach nothing)."""
    return spec.kl_coef if spec.kl_coef > 0 else 1.0


def on_policy(ctx: Context) -> bool:
    return ctx.spec.distill_mode == "on_policy"


on_policy.label = "distill_mode == on_policy"  # type: ignore[attr-defined]


def _same_tokenizer(a, b) -> bool:
    try:
        size_a, size_b = len(a), len(b)
    except TypeError:
        size_a, size_b = getattr(a, "vocab_size", None), getattr(b, "vocab_size", None)
    return size_a == size_b and list(a.encode(_PROBE, add_special_tokens=False)) == list(b.encode(_PROBE, add_special_tokens=False))


def _tokenizers_differ(spec) -> ConfigError:
    return ConfigError(
        f"teacher={teacher_name(spec)} uses a different tokenizer than the student model={spec.model}. On-policy "
        "distillation compares the two models' logprobs token by token, so they must share a tokenizer: pick a "
        "teacher of the same family (e.g. the RUN_DIR of a run on the same model), or use distill_mode=off_policy."
    )


class DistillSetup(Stage):
    """Prompts from the chat data, the frozen teacher, and the step plan (max_steps steps)."""

    def validate(self, ctx: Context) -> None:
        """On-policy, the two tokenizers are compared here too, when both load without weights."""
        require_max_steps(ctx, "distillation")
        spec = ctx.spec
        if spec.distill_mode != "on_policy" or teacher_name(spec) == spec.model:
            return
        from kitchen.stages.session import offline_tokenizer

        student = offline_tokenizer(spec)
        teacher = offline_tokenizer(spec, base_model=teacher_name(spec)) if student is not None else None
        if teacher is not None and not _same_tokenizer(teacher, student):
            raise _tokenizers_differ(spec)

    def execute(self, ctx: Context) -> None:
        from kitchen.train.batching import BatchPlan

        spec, data, session, state = ctx.spec, ctx.use(ChatData), ctx.use(Session), ctx.use(DistillState)
        train_prompts = [p for p in (prompt_part(r["messages"]) for r in data.train_rows if r.get("messages")) if p]
        if not train_prompts:
            from kitchen.data.mixture import dataset_label

            raise DataError(f"{dataset_label(spec.dataset)}: no prompts to distill on (rows need 'messages' with at least one user turn).")
        test_prompts = [p for p in (prompt_part(r["messages"]) for r in data.test_rows if r.get("messages")) if p]
        state.prompts = train_prompts
        state.eval_prompts = test_prompts[: spec.eval_max_examples]
        state.teacher = ctx.training.sampling_client(base_model=teacher_name(spec))
        state.teacher_renderer = session.renderer
        teacher_tok = state.teacher.get_tokenizer() if hasattr(state.teacher, "get_tokenizer") else None
        if teacher_tok is not None and not _same_tokenizer(teacher_tok, session.tokenizer):
            if spec.distill_mode == "on_policy":
                raise _tokenizers_differ(spec)
            state.teacher_renderer = make_renderer(spec, teacher_tok)
        state.prompt_plan = BatchPlan(len(train_prompts), spec.groups_per_batch, 1_000_000, None, spec.seed)
        ctx.progress.total_steps = spec.max_steps
        ctx.emit(
            ev.RUN_INFO,
            message=f"distillation ({spec.distill_mode}): teacher {teacher_name(spec)}, {len(train_prompts)} prompts, "
            f"{spec.groups_per_batch} x {spec.group_size} samples per step"
            + (f", kl_coef {kl_coef(spec)}" if spec.distill_mode == "on_policy" else ""),
        )
        if teacher_name(spec) == spec.model:
            ctx.emit(ev.RUN_WARNING, message=f"the teacher is the student's own base model ({spec.model}): there is nothing to distill. Pass teacher=RUN_DIR or another model.")


class DistillPrompts(Stage):
    """This step's prompts (deterministic in seed and step); on-policy, a sampler over the current weights."""

    def execute(self, ctx: Context) -> None:
        ctx.pipeline.drain()
        state, rollouts = ctx.use(DistillState), ctx.use(Rollouts)
        batch = state.prompt_plan.batch(ctx.step)
        renderer = ctx.use(Session).renderer if on_policy(ctx) else state.teacher_renderer
        rollouts.groups = [Group(state.prompts[i], renderer.build_prompt(state.prompts[i])) for i in batch.indices]
        if on_policy(ctx):
            rollouts.sampler = ctx.training.sampling_client()


class StudentRollout(RolloutStage):
    """The student samples group_size completions per prompt (rollout_concurrency lanes); the teacher scores each token."""

    def rollout(self, ctx: Context, group: Group, result: SampleResult) -> None:
        renderer = ctx.use(Session).renderer
        samples = [Sample(list(s.tokens), list(s.logprobs), renderer.parse_response(s.tokens)) for s in result.sequences if s.tokens]
        score_tokens(ctx.use(DistillState).teacher, group, samples)
        group.samples = samples


class ReverseKLStep(Stage):
    """Per token: advantage = kl_coef * (teacher_lp - student_lp) -> RL datums; metric teacher_kl."""

    def execute(self, ctx: Context) -> StepOutput:
        from kitchen.train.distill import reverse_kl_advantages, teacher_kl
        from kitchen.train.rl import build_rl_datum, entropy_estimate

        coef, groups = kl_coef(ctx.spec), ctx.use(Rollouts).groups
        datums, student, teacher, counts = [], [], [], []
        for group in groups:
            for s in group.samples:
                adv = reverse_kl_advantages(s.logprobs, s.ref_logprobs, coef)
                datums.append(build_rl_datum(group.prompt_tokens, s.tokens, s.logprobs, adv))
                student.extend(s.logprobs)
                teacher.extend(s.ref_logprobs)
                counts.append(len(s.tokens))
        if not datums:
            raise KitchenError(f"Step {ctx.step + 1}: every student sample came back empty; check max_tokens and the stop sequences.")
        metrics = {
            "teacher_kl": teacher_kl(student, teacher),
            "entropy": entropy_estimate(student),
            "sampled_tokens": float(sum(counts)),
            "num_samples": float(len(counts)),
        }
        emit_rollouts(ctx, groups)
        return StepOutput(datums, ctx.spec.loss_fn, loss_fn_config_for(ctx.spec.loss_fn), metrics)


class TeacherRollout(RolloutStage):
    """Off-policy: the teacher samples group_size completions per prompt (rollout_concurrency lanes)."""

    salt = 7  # the teacher's seeds differ from the student's

    def sampler(self, ctx: Context) -> Any:
        return ctx.use(DistillState).teacher

    def renderer(self, ctx: Context) -> Any:
        return ctx.use(DistillState).teacher_renderer

    def rollout(self, ctx: Context, group: Group, result: SampleResult) -> None:
        renderer = ctx.use(DistillState).teacher_renderer
        group.samples = [Sample(list(s.tokens), list(s.logprobs), renderer.parse_response(s.tokens)) for s in result.sequences]


class TeacherSFTStep(Stage):
    """Teacher completions -> SFT rows -> cross_entropy datums for the student."""

    def execute(self, ctx: Context) -> StepOutput:
        from kitchen.train.datum import build_sft_data
        from kitchen.train.distill import teacher_samples_to_sft_rows

        groups = ctx.use(Rollouts).groups
        rows = teacher_samples_to_sft_rows((g.prompt_messages, s.text) for g in groups for s in g.samples)
        datums, _ = build_sft_data(rows, ctx.use(Session).renderer, source="teacher samples") if rows else ([], None)
        if not datums:
            raise DataError(f"Step {ctx.step + 1}: the teacher's completions were all empty; nothing to train on. Raise max_tokens or check the teacher.")
        metrics = {
            "teacher_tokens": float(sum(len(s.tokens) for g in groups for s in g.samples)),
            "num_samples": float(len(datums)),
        }
        emit_rollouts(ctx, groups)
        return StepOutput(datums, "cross_entropy", None, metrics)


class HeldOutTeacherKL:
    """Held-out reverse KL to the teacher: the student samples one completion per test prompt (eval_teacher_kl)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def __call__(self, env: EvalEnv) -> EvalResult:
        from kitchen.train.distill import teacher_kl
        from kitchen.train.rl import completion_logprobs

        state = self.ctx.use(DistillState)
        if not env.want_metrics or not state.eval_prompts or state.teacher_renderer is not env.renderer:
            return EvalResult()  # different tokenizers (off-policy): per-token KL is undefined
        spec, renderer = env.spec, env.renderer
        tokens = [renderer.build_prompt(p) for p in state.eval_prompts]
        futures = [env.sampler.sample(t, 1, sample_params(spec, renderer, sampling_seed(spec.seed, 0, i, salt=13)))
                   for i, t in enumerate(tokens)]
        student_lp, teacher_lp, scored = [], [], []
        for prompt, future in zip(tokens, futures):
            seq = future.result().sequences[0]
            if seq.tokens:
                student_lp.extend(seq.logprobs)
                scored.append((prompt, state.teacher.compute_logprobs(prompt + list(seq.tokens))))
        for prompt, future in scored:
            teacher_lp.extend(completion_logprobs(future.result(), len(prompt)))
        return EvalResult({"eval_teacher_kl": teacher_kl(student_lp, teacher_lp)})


def distill_evaluators(ctx: Context) -> list[Any]:
    from kitchen.evaluators import GreedyPreview

    state = ctx.use(DistillState)
    return [HeldOutTeacherKL(ctx), GreedyPreview(state.eval_prompts or state.prompts)]
