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

import time

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.errors import ConfigError, DataError
from kitchen.stages.rl import (
    Group,
    Sample,
    StepPlan,
    lane_indices,
    loss_fn_config_for,
    prompt_part,
    require_max_steps,
    sample_params,
    sampling_seed,
)
from kitchen.stages.train import drain, outside_training
from kitchen.telemetry import events as ev

DEFAULT_TEACHER = "smollm2-135m-instruct"
_PROBE = "Chef's note: 1 1/2 cups is 360 ml. Happy cooking! <|im_end|>"


def teacher_name(spec) -> str:
    return spec.teacher or DEFAULT_TEACHER


def kl_coef(spec) -> float:
    """The reverse-KL advantage scale: kl_coef, or 1.0 when it is 0 (0 would teach nothing)."""
    return spec.kl_coef if spec.kl_coef > 0 else 1.0


def _same_tokenizer(a, b) -> bool:
    try:
        size_a, size_b = len(a), len(b)
    except TypeError:
        size_a, size_b = getattr(a, "vocab_size", None), getattr(b, "vocab_size", None)
    return size_a == size_b and list(a.encode(_PROBE, add_special_tokens=False)) == list(b.encode(_PROBE, add_special_tokens=False))


@register_stage("distill_setup")
class DistillSetup(Stage):
    """Prompts from the chat data, the frozen teacher, and the step plan (max_steps steps)."""

    def validate(self, ctx: Context) -> None:
        require_max_steps(ctx, "distillation")

    def execute(self, ctx: Context) -> None:
        spec = ctx.spec
        train_prompts = [prompt_part(r["messages"]) for r in ctx.state["train_rows"] if r.get("messages")]
        train_prompts = [p for p in train_prompts if p]
        if not train_prompts:
            raise DataError(f"{spec.dataset}: no prompts to distill on (rows need 'messages' with at least one user turn).")
        test_prompts = [prompt_part(r["messages"]) for r in ctx.state.get("test_rows") or [] if r.get("messages")]
        ctx.state["prompts"] = train_prompts
        ctx.state["eval_prompts"] = [p for p in test_prompts if p][: spec.eval_max_examples]
        teacher = ctx.training.sampling_client(base_model=teacher_name(spec))
        ctx.state["teacher"] = teacher
        ctx.state["teacher_renderer"] = ctx.state["renderer"]
        teacher_tok = teacher.get_tokenizer() if hasattr(teacher, "get_tokenizer") else None
        if teacher_tok is not None and not _same_tokenizer(teacher_tok, ctx.state["tokenizer"]):
            if spec.distill_mode == "on_policy":
                raise ConfigError(
                    f"teacher={teacher_name(spec)} uses a different tokenizer than the student model={spec.model}. On-policy "
                    "distillation compares the two models' logprobs token by token, so they must share a tokenizer: pick a "
                    "teacher of the same family (e.g. the RUN_DIR of a run on the same model), or use distill_mode=off_policy."
                )
            from kitchen.train.renderers import build_renderer

            ctx.state["teacher_renderer"] = build_renderer(spec.renderer, teacher_tok, spec.train_on_what, spec.max_length)
        from kitchen.train.batching import BatchPlan

        ctx.state["prompt_plan"] = BatchPlan(len(train_prompts), spec.groups_per_batch, 1_000_000, None, spec.seed)
        ctx.state["plan"] = StepPlan(spec.max_steps)
        ctx.state["total_steps"] = spec.max_steps
        if spec.distill_mode == "on_policy":
            ctx.state["loss_fn"] = spec.loss_fn
            ctx.state["loss_fn_config"] = loss_fn_config_for(spec.loss_fn)
        else:
            ctx.state["loss_fn"] = "cross_entropy"
            ctx.state["loss_fn_config"] = None
        same = teacher_name(spec) == spec.model
        ctx.emit(
            ev.RUN_INFO,
            message=f"distillation ({spec.distill_mode}): teacher {teacher_name(spec)}, {len(train_prompts)} prompts, "
            f"{spec.groups_per_batch} x {spec.group_size} samples per step"
            + (f", kl_coef {kl_coef(spec)}" if spec.distill_mode == "on_policy" else ""),
        )
        if same:
            ctx.emit(ev.RUN_WARNING, message=f"the teacher is the student's own base model ({spec.model}): there is nothing to distill. Pass teacher=RUN_DIR or another model.")


def on_policy(ctx: Context) -> bool:
    return ctx.spec.distill_mode == "on_policy"


on_policy.label = "distill_mode == on_policy"  # type: ignore[attr-defined]


@register_stage("distill_batch")
class DistillBatch(Stage):
    """This step's prompts (deterministic in seed and step); on-policy, a sampler over the current weights."""

    def execute(self, ctx: Context) -> None:
        drain(ctx)
        prompts = ctx.state["prompts"]
        batch = ctx.state["prompt_plan"].batch(ctx.step)
        renderer = ctx.state["renderer"] if on_policy(ctx) else ctx.state["teacher_renderer"]
        ctx.state["groups"] = [Group(prompts[i], renderer.build_prompt(prompts[i])) for i in batch.indices]
        if on_policy(ctx):
            ctx.state["sampler"] = ctx.training.sampling_client()


@register_stage("student_rollout")
class StudentRollout(Stage):
    """One lane: the student samples group_size completions per prompt; the teacher scores every token."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.rl import completion_logprobs

        spec = ctx.spec
        groups = ctx.state["groups"]
        mine = lane_indices(ctx, self.options, len(groups))
        if not mine:
            return
        sampler, teacher, renderer = ctx.state["sampler"], ctx.state["teacher"], ctx.state["renderer"]
        futures = [sampler.sample(groups[g].prompt_tokens, spec.group_size, sample_params(ctx, sampling_seed(spec.seed, ctx.step, g))) for g in mine]
        for g, future in zip(mine, futures):
            group = groups[g]
            samples = [Sample(list(s.tokens), list(s.logprobs), renderer.parse_response(s.tokens)) for s in future.result().sequences if s.tokens]
            scored = [teacher.compute_logprobs(group.prompt_tokens + s.tokens) for s in samples]
            for s, f in zip(samples, scored):
                s.ref_logprobs = completion_logprobs(f.result(), len(group.prompt_tokens))
            group.samples = samples


@register_stage("reverse_kl_advantages")
class ReverseKLAdvantages(Stage):
    """Per token: advantage = kl_coef * (teacher_lp - student_lp) -> RL datums; metric teacher_kl."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.distill import reverse_kl_advantages, teacher_kl
        from kitchen.train.rl import build_rl_datum, entropy_estimate

        coef = kl_coef(ctx.spec)
        datums, student, teacher, counts = [], [], [], []
        for group in ctx.state["groups"]:
            for s in group.samples:
                adv = reverse_kl_advantages(s.logprobs, s.ref_logprobs, coef)
                datums.append(build_rl_datum(group.prompt_tokens, s.tokens, s.logprobs, adv))
                student.extend(s.logprobs)
                teacher.extend(s.ref_logprobs)
                counts.append(len(s.tokens))
        if not datums:
            from kitchen.errors import KitchenError

            raise KitchenError(f"Step {ctx.step + 1}: every student sample came back empty; check max_tokens and the stop sequences.")
        ctx.state["train_datums"] = datums
        ctx.state["step_metrics"] = {
            "teacher_kl": teacher_kl(student, teacher),
            "entropy": entropy_estimate(student),
            "sampled_tokens": float(sum(counts)),
            "num_samples": float(len(counts)),
        }
        _emit_rollouts(ctx)


@register_stage("teacher_rollout")
class TeacherRollout(Stage):
    """One lane (off-policy): the teacher samples group_size completions per prompt."""

    def execute(self, ctx: Context) -> None:
        spec = ctx.spec
        groups = ctx.state["groups"]
        mine = lane_indices(ctx, self.options, len(groups))
        if not mine:
            return
        teacher, renderer = ctx.state["teacher"], ctx.state["teacher_renderer"]
        futures = [
            teacher.sample(groups[g].prompt_tokens, spec.group_size,
                           sample_params(ctx, sampling_seed(spec.seed, ctx.step, g, salt=7), renderer=renderer))
            for g in mine
        ]
        for g, future in zip(mine, futures):
            groups[g].samples = [Sample(list(s.tokens), list(s.logprobs), renderer.parse_response(s.tokens)) for s in future.result().sequences]


@register_stage("teacher_sft_datums")
class TeacherSFTDatums(Stage):
    """Teacher completions -> SFT rows -> cross_entropy datums for the student."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.datum import build_sft_data
        from kitchen.train.distill import teacher_samples_to_sft_rows

        groups = ctx.state["groups"]
        rows = teacher_samples_to_sft_rows((g.prompt_messages, s.text) for g in groups for s in g.samples)
        datums, _ = build_sft_data(rows, ctx.state["renderer"], source="teacher samples") if rows else ([], None)
        if not datums:
            raise DataError(f"Step {ctx.step + 1}: the teacher's completions were all empty; nothing to train on. Raise max_tokens or check the teacher.")
        ctx.state["train_datums"] = datums
        ctx.state["step_metrics"] = {
            "teacher_tokens": float(sum(len(s.tokens) for g in groups for s in g.samples)),
            "num_samples": float(len(datums)),
        }
        _emit_rollouts(ctx)


def _emit_rollouts(ctx: Context) -> None:
    from kitchen.stages.rl import last_user_text

    for group in ctx.state["groups"][: ctx.spec.num_preview_samples]:
        if group.samples:
            ctx.emit(ev.SAMPLE, tag="rollout", step=ctx.step + 1, prompt=last_user_text(group.prompt_messages), completion=group.samples[0].text)


@register_stage("distill_evaluate")
class DistillEvaluate(Stage):
    """Held-out reverse KL to the teacher: the student samples one completion per test prompt (eval_teacher_kl)."""

    @outside_training
    def execute(self, ctx: Context) -> None:
        from kitchen.train.distill import teacher_kl
        from kitchen.train.rl import completion_logprobs

        prompts = ctx.state.get("eval_prompts") or []
        if not prompts or ctx.state.get("last_eval_step") == ctx.step:
            return
        if ctx.state["teacher_renderer"] is not ctx.state["renderer"]:
            return  # different tokenizers (off-policy): per-token KL is undefined
        drain(ctx)
        ctx.emit(ev.EVAL_START, step=ctx.step, split="test")
        t0 = time.perf_counter()
        renderer, teacher, spec = ctx.state["renderer"], ctx.state["teacher"], ctx.spec
        student = ctx.training.sampling_client()
        tokens = [renderer.build_prompt(p) for p in prompts]
        futures = [student.sample(t, 1, sample_params(ctx, sampling_seed(spec.seed, 0, i, salt=13))) for i, t in enumerate(tokens)]
        student_lp, teacher_lp = [], []
        scored = []
        for prompt, future in zip(tokens, futures):
            seq = future.result().sequences[0]
            if seq.tokens:
                student_lp.extend(seq.logprobs)
                scored.append((prompt, teacher.compute_logprobs(prompt + list(seq.tokens))))
        for prompt, future in scored:
            teacher_lp.extend(completion_logprobs(future.result(), len(prompt)))
        metrics = {"eval_teacher_kl": teacher_kl(student_lp, teacher_lp)}
        ctx.state["last_eval_step"] = ctx.step
        ctx.state.setdefault("eval_history", []).append((ctx.step, metrics))
        ctx.metrics.update(metrics)
        ctx.metrics.setdefault("initial_eval_teacher_kl", metrics["eval_teacher_kl"])
        ctx.emit(ev.EVAL_RESULT, step=ctx.step, split="test", metrics=metrics)
        ctx.emit(ev.EVAL_STOP, step=ctx.step, duration_s=time.perf_counter() - t0)
