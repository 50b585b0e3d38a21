"""Reinforcement-learning stages (GRPO-style), plus the pieces the other policy-gradient
workflows share: rollout lanes, ``train_batch`` and greedy previews.

One RL step, as the workflow spells it::

    rl_batch        this step's prompts (a pure function of seed and step) and a sampler
                    over the current weights
    rollout x N     lanes in a ``parallel`` node: sample group_size completions per prompt,
                    score them, and (kl_coef > 0) get the reference model's logprobs
    rl_advantages   group-centred advantages (+ KL penalty) -> RL datums + step metrics
    train_batch     forward_backward(loss_fn) carrying the step metrics into training.step
    optim_step, log_step   (the supervised stages, unchanged)

Everything here talks to ports (TrainingClient / SamplingClient) and the pure math in
``kitchen.train.rl``; nothing is backend-specific. Futures are submitted before they are
awaited, so a remote backend has a whole lane's groups in flight at once.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Sequence

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.errors import ConfigError
from kitchen.ports.types import Datum, ForwardBackwardResult, SamplingParams
from kitchen.stages.train import drain, outside_training, submit
from kitchen.telemetry import events as ev

# --------------------------------------------------------------------------- shared pieces


@dataclass
class Sample:
    """One sampled completion of a prompt."""

    tokens: list[int]
    logprobs: list[float]  # the sampler's logprob of each sampled token
    text: str
    reward: float = 0.0
    correct: bool = False
    ref_logprobs: list[float] | None = None  # reference (RL) or teacher (distillation) logprobs


@dataclass
class Group:
    """A prompt and its samples (a GRPO group)."""

    prompt_messages: list[dict]
    prompt_tokens: list[int]
    problem: Any = None
    samples: list[Sample] = field(default_factory=list)


@dataclass(frozen=True)
class StepPlan:
    """A fixed number of optimizer steps (RL, distillation); also marks the run as resumable."""

    total_steps: int

    def steps_from(self, step: int) -> range:
        return range(step, self.total_steps)


def steps(ctx: Context) -> range:
    """The optimizer steps still to run (0-based), from the restored step on."""
    return ctx.state["plan"].steps_from(ctx.step)


def require_max_steps(ctx: Context, workflow: str) -> None:
    if not ctx.spec.max_steps:
        raise ConfigError(
            f"The {workflow} workflow needs max_steps (it has no dataset epochs to count): pass max_steps=N, e.g. max_steps=20."
        )


def sampling_seed(seed: int, step: int, index: int, salt: int = 0) -> int:
    """A per-(step, group) sampler seed: reproducible, independent of thread scheduling."""
    return (int(seed) * 1_000_003 + int(step) * 10_007 + int(index) * 101 + salt) % (2**31 - 1)


def lane_indices(ctx: Context, options: dict[str, Any], n: int) -> list[int]:
    """The items this lane owns: ``g % lanes == lane``, with at most ``rollout_concurrency`` lanes busy."""
    lanes = max(1, min(int(options.get("lanes", 1)), ctx.spec.rollout_concurrency))
    lane = int(options.get("lane", 0))
    if lane >= lanes:
        return []
    return [g for g in range(n) if g % lanes == lane]


def prompt_part(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) the last assistant message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return list(messages[:i])
    return list(messages)


def last_user_text(messages: Sequence[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""


def sample_params(ctx: Context, seed: int | None, temperature: float | None = None, max_tokens: int | None = None,
                  renderer: Any = None) -> SamplingParams:
    renderer = renderer or ctx.state["renderer"]
    return SamplingParams(
        max_tokens=max_tokens or ctx.spec.max_tokens,
        temperature=ctx.spec.temperature if temperature is None else temperature,
        stop=tuple(renderer.stop_sequences),
        seed=seed,
    )


def full_sequence(datum: Datum) -> list[int]:
    """``model_input + [last target]``: the token sequence a datum was shifted from."""
    return list(datum.model_input) + [datum.loss_fn_inputs["target_tokens"][-1]]


def _with_metrics(future: Future, extra: dict[str, float], loss: float | None, drop: Sequence[str]) -> Future:
    """A future resolving to ``future``'s result with ``extra`` metrics first (and ``loss`` replaced)."""
    out: Future = Future()

    def done(f: Future) -> None:
        try:
            r = f.result()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits
            out.set_exception(exc)
            return
        metrics = dict(extra)
        for k, v in r.metrics.items():
            if k not in metrics and k not in drop:
                metrics[k] = v
        out.set_result(ForwardBackwardResult(r.loss if loss is None else loss, r.logprobs, metrics))

    future.add_done_callback(done)
    return out


def submit_batch(
    ctx: Context,
    datums: list[Datum],
    loss_fn: str,
    loss_fn_config: dict[str, float] | None = None,
    metrics: dict[str, float] | None = None,
    loss: float | None = None,
    drop: Sequence[str] = (),
) -> None:
    """forward_backward and queue the step for ``optim_step`` / ``log_step`` (train.py's pipeline).

    ``metrics`` are published with the step's training.step event (before the backend's
    own); ``loss`` replaces the backend's reported loss (DPO: its cross_entropy surrogate
    has no meaningful value), and ``drop`` removes backend metrics that mean nothing.
    """
    metrics = dict(metrics or {})
    submit(ctx, datums, loss_fn, loss_fn_config, wrap=lambda future: _with_metrics(future, metrics, loss, drop))
    for k, v in metrics.items():
        ctx.metrics[k] = v


@register_stage("train_batch")
class TrainBatch(Stage):
    """forward_backward on ``state.train_datums`` with ``state.loss_fn``; the step's metrics ride along."""

    def execute(self, ctx: Context) -> None:
        submit_batch(
            ctx,
            ctx.state["train_datums"],
            ctx.state.get("loss_fn", "cross_entropy"),
            ctx.state.get("loss_fn_config"),
            ctx.state.get("step_metrics"),
            ctx.state.get("step_loss"),
            ctx.state.get("drop_metrics", ()),
        )


def loss_fn_config_for(loss_fn: str) -> dict[str, float] | None:
    if loss_fn == "ppo":
        from kitchen.train.rl import ppo_loss_fn_config

        return ppo_loss_fn_config()  # Tinker's ratio bounds 0.8 / 1.2 (what kitchen.train.losses expects)
    return None


def greedy_previews(ctx: Context, sampler: Any, prompts: list[list[dict]], tag: str, score=None, max_tokens: int | None = None) -> list[str]:
    """Greedy completions for ``prompts``, emitted as sample.completion events tagged ``tag``."""
    renderer = ctx.state["renderer"]
    params = sample_params(ctx, seed=ctx.spec.seed, temperature=0.0, max_tokens=max_tokens or ctx.spec.preview_max_tokens)
    futures = [sampler.sample(renderer.build_prompt(p), 1, params) for p in prompts]
    texts = []
    for i, (messages, future) in enumerate(zip(prompts, futures)):
        seq = future.result().sequences[0]
        text = renderer.parse_response(seq.tokens)
        texts.append(text)
        extra = {"reward": score(i, text)} if score is not None else {}
        ctx.emit(ev.SAMPLE, tag=tag, step=ctx.step, prompt=last_user_text(messages), completion=text, **extra)
    return texts


# --------------------------------------------------------------------------- RL stages


@register_stage("rl_setup")
class RLSetup(Stage):
    """Build the environment, its held-out prompts, and the step plan (max_steps steps)."""

    def validate(self, ctx: Context) -> None:
        require_max_steps(ctx, "reinforcement")
        from kitchen.train.envs import ENVS

        if ctx.spec.env not in ENVS:
            from kitchen.errors import did_you_mean

            raise ConfigError(f"Unknown env '{ctx.spec.env}'.{did_you_mean(ctx.spec.env, list(ENVS))} Available: {', '.join(sorted(ENVS))}.")

    def execute(self, ctx: Context) -> None:
        from kitchen.train.envs import make_env

        spec = ctx.spec
        env = make_env(spec.env)
        ctx.state["env"] = env
        ctx.state["eval_problems"] = env.eval_prompts(spec.eval_max_examples, seed=spec.seed)
        ctx.state["plan"] = StepPlan(spec.max_steps)
        ctx.state["total_steps"] = spec.max_steps
        ctx.state["loss_fn"] = spec.loss_fn
        ctx.state["loss_fn_config"] = loss_fn_config_for(spec.loss_fn)
        ctx.emit(
            ev.RUN_INFO,
            message=f"env {env.name}: {spec.groups_per_batch} prompts x {spec.group_size} samples per step, "
            f"{len(ctx.state['eval_problems'])} held-out eval prompts, loss {spec.loss_fn}, kl_coef {spec.kl_coef}",
        )


@register_stage("rl_batch")
class RLBatch(Stage):
    """This step's prompts (deterministic in seed and step) and a sampler over the current weights."""

    def execute(self, ctx: Context) -> None:
        drain(ctx)  # on-policy: the sampler must see every finished optimizer step
        spec = ctx.spec
        renderer = ctx.state["renderer"]
        step = ctx.step
        problems = ctx.state["env"].initial_prompts(spec.seed * 1_000_003 + step, spec.groups_per_batch)
        ctx.state["groups"] = [Group(p.messages, renderer.build_prompt(p.messages), problem=p) for p in problems]
        ctx.state["sampler"] = ctx.training.sampling_client()
        if spec.kl_coef > 0 and "reference" not in ctx.state:
            ctx.state["reference"] = ctx.training.sampling_client(base_model=spec.model)


@register_stage("rollout")
class Rollout(Stage):
    """One lane of rollouts: sample group_size completions per owned prompt, score them."""

    def execute(self, ctx: Context) -> None:
        spec = ctx.spec
        groups: list[Group] = ctx.state["groups"]
        mine = lane_indices(ctx, self.options, len(groups))
        if not mine:
            return
        sampler, renderer, env = ctx.state["sampler"], ctx.state["renderer"], ctx.state["env"]
        futures = [
            sampler.sample(groups[g].prompt_tokens, spec.group_size, sample_params(ctx, sampling_seed(spec.seed, ctx.step, g)))
            for g in mine
        ]
        reference = ctx.state.get("reference") if spec.kl_coef > 0 else None
        for g, future in zip(mine, futures):
            group = groups[g]
            samples = []
            for seq in future.result().sequences:
                text = renderer.parse_response(seq.tokens)
                score = env.score(group.problem, text)
                samples.append(Sample(list(seq.tokens), list(seq.logprobs), text, float(score.reward), bool(score.correct)))
            if reference is not None:
                from kitchen.train.rl import completion_logprobs

                ref_futures = [reference.compute_logprobs(group.prompt_tokens + s.tokens) for s in samples if s.tokens]
                for s, f in zip([s for s in samples if s.tokens], ref_futures):
                    s.ref_logprobs = completion_logprobs(f.result(), len(group.prompt_tokens))
            group.samples = samples


@register_stage("rl_advantages")
class RLAdvantages(Stage):
    """Group-centred advantages (minus kl_coef * (logp - logp_ref) per token) -> RL datums and metrics."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.rl import batch_group_advantages, build_rl_datum, kl_penalty_advantages, rl_step_metrics

        spec = ctx.spec
        groups: list[Group] = ctx.state["groups"]
        rewards = [[s.reward for s in g.samples] for g in groups]
        advantages, _ = batch_group_advantages(rewards)
        datums: list[Datum] = []
        fallback: list[Datum] = []  # zero-advantage datums, used only if nothing else is left
        for group, advs in zip(groups, advantages):
            for sample, adv in zip(group.samples, advs):
                if not sample.tokens:
                    continue
                token_adv: float | list[float] = adv
                if spec.kl_coef > 0 and sample.ref_logprobs is not None:
                    token_adv = kl_penalty_advantages([adv] * len(sample.tokens), sample.logprobs, sample.ref_logprobs, spec.kl_coef)
                datum = build_rl_datum(group.prompt_tokens, sample.tokens, sample.logprobs, token_adv)
                if any(datum.loss_fn_inputs["advantages"]):
                    datums.append(datum)
                else:
                    fallback.append(datum)
        if not datums:  # every group degenerate: a zero-gradient step keeps the step count honest
            datums = fallback[:1]
        if not datums:
            from kitchen.errors import KitchenError

            raise KitchenError(f"Step {ctx.step + 1}: every rollout came back empty (0 sampled tokens); check max_tokens and the stop sequences.")
        samples = [s for g in groups for s in g.samples]
        with_ref = [s for s in samples if s.ref_logprobs is not None] if spec.kl_coef > 0 else []
        metrics = rl_step_metrics(
            rewards,
            [[s.correct for s in g.samples] for g in groups],
            [len(s.tokens) for s in samples],
            [s.logprobs for s in samples],
            None,
        )
        if with_ref:
            from kitchen.train.rl import approx_kl

            flat_lp = [x for s in with_ref for x in s.logprobs]
            flat_ref = [x for s in with_ref for x in s.ref_logprobs]  # type: ignore[union-attr]
            metrics["kl_ref"] = approx_kl(flat_lp, flat_ref)
        metrics["num_datums"] = float(len(datums))
        first = ("reward_mean", "accuracy", "entropy", "kl_ref", "sampled_tokens")  # the console shows the first few
        ordered = {k: metrics[k] for k in first if k in metrics}
        ordered.update((k, v) for k, v in metrics.items() if k not in ordered)
        ctx.state["train_datums"] = datums
        ctx.state["step_metrics"] = ordered
        for group in groups[: ctx.spec.num_preview_samples]:
            if group.samples:
                s = group.samples[0]
                ctx.emit(ev.SAMPLE, tag="rollout", step=ctx.step + 1, prompt=last_user_text(group.prompt_messages), completion=s.text, reward=s.reward)


@register_stage("rl_evaluate")
class RLEvaluate(Stage):
    """Greedy accuracy on the env's held-out prompts (eval.result eval_accuracy); tag= also previews a few."""

    @outside_training
    def execute(self, ctx: Context) -> None:
        problems = ctx.state.get("eval_problems") or []
        if not problems:
            return
        drain(ctx)
        tag = self.options.get("tag")
        if ctx.state.get("last_eval_step") == ctx.step:  # already evaluated at this step: previews only
            if tag:
                env = ctx.state["env"]
                shown = problems[: ctx.spec.num_preview_samples]
                greedy_previews(ctx, ctx.training.sampling_client(), [p.messages for p in shown], tag,
                                score=lambda i, text: env.score(shown[i], text).reward, max_tokens=ctx.spec.max_tokens)
            return
        ctx.emit(ev.EVAL_START, step=ctx.step, split="test")
        t0 = time.perf_counter()
        renderer, env = ctx.state["renderer"], ctx.state["env"]
        sampler = ctx.training.sampling_client()
        params = sample_params(ctx, seed=ctx.spec.seed, temperature=0.0)
        futures = [sampler.sample(renderer.build_prompt(p.messages), 1, params) for p in problems]
        scores, texts = [], []
        for p, f in zip(problems, futures):
            text = renderer.parse_response(f.result().sequences[0].tokens)
            texts.append(text)
            scores.append(env.score(p, text))
        metrics = {
            "eval_accuracy": sum(1.0 for s in scores if s.correct) / len(scores),
            "eval_reward": sum(s.reward for s in scores) / len(scores),
        }
        ctx.state["last_eval_step"] = ctx.step
        ctx.state.setdefault("eval_history", []).append((ctx.step, metrics))
        ctx.metrics.update(metrics)
        ctx.metrics.setdefault("initial_eval_accuracy", metrics["eval_accuracy"])
        ctx.emit(ev.EVAL_RESULT, step=ctx.step, split="test", metrics=metrics)
        if tag:
            for p, text, s in list(zip(problems, texts, scores))[: ctx.spec.num_preview_samples]:
                ctx.emit(ev.SAMPLE, tag=tag, step=ctx.step, prompt=last_user_text(p.messages), completion=text, reward=s.reward)
        ctx.emit(ev.EVAL_STOP, step=ctx.step, duration_s=time.perf_counter() - t0)
