"""Session stages: open the backend session (model + renderer), and restore a checkpoint on resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kitchen.config.spec import train_on_what_of
from kitchen.engine.context import Context
from kitchen.engine.stage import Stage
from kitchen.ports.types import CheckpointRef, LoraConfig, SessionConfig
from kitchen.telemetry import events as ev


@dataclass
class Session:
    """The open backend session: its tokenizer and the renderer built for it (what the
    backend said it loaded is ``ctx.record.session``)."""

    tokenizer: Any = None
    renderer: Any = None


def session_config(spec) -> SessionConfig:
    lora = LoraConfig(
        rank=spec.lora_rank,
        alpha=spec.lora_alpha,
        dropout=spec.lora_dropout,
        target_modules=spec.lora_targets,
        train_mlp=spec.train_mlp,
        train_attn=spec.train_attn,
        train_unembed=spec.train_unembed,
    )
    return SessionConfig(
        base_model=spec.model, lora=lora, seed=spec.seed, dtype=spec.dtype, device=spec.device, max_length=spec.max_length,
        model_revision=spec.model_revision, chat_template=spec.chat_template,
        micro_batch_size=spec.micro_batch_size, max_tokens_per_micro_batch=spec.max_tokens_per_micro_batch,
        loss_chunk_tokens=spec.loss_chunk_tokens,
        activation_checkpointing=spec.activation_checkpointing, padding_free=spec.padding_free,
        mixed_precision=spec.mixed_precision, quantization=spec.quantization, optimizer=spec.optimizer(),
        precision=spec.precision, force_precision=spec.force_precision, fused_loss=spec.fused_loss,
    )


def offline_tokenizer(spec, base_model: str | None = None) -> Any:
    """The session's tokenizer without opening it (the adapters' ``tokenizer`` hook), or None.

    ``base_model`` asks for another model's (a distillation teacher's) on the same backend.

    None when the adapters declare no hook (Tinker: the service names the tokenizer) or
    the model is not on this machine yet; the data's token lengths are then first seen
    when the session opens.
    """
    hook = spec.adapters.tokenizer
    if not hook:
        return None
    from kitchen.config.catalog import load_target

    config = session_config(spec)
    if base_model is not None and base_model != spec.model:
        config = dataclasses.replace(config, base_model=base_model, model_revision=None)
    return load_target(hook, f"adapters={spec.adapters.name} tokenizer")(config, spec.adapters.training)


def make_renderer(spec, tokenizer: Any) -> Any:
    """The spec's renderer (a short name or a ``_target_`` node) for ``tokenizer``."""
    from kitchen.config.instantiate import build

    return build("renderers", spec.renderer, tokenizer=tokenizer,
                 train_on_what=train_on_what_of(spec), max_length=spec.max_length)


class OpenSession(Stage):
    """Load the base model on the backend and build the renderer for its tokenizer."""

    def validate(self, ctx: Context) -> None:
        """The renderer must exist and the adapters' preflight (credentials, model) must pass; no weights load."""
        from kitchen.config.instantiate import resolve
        from kitchen.runs.model_preflight import (
            check_models,  # model=, model_revision=, teacher=, chat_template=, push_to_hub=
        )

        resolve("renderers", ctx.spec.renderer)
        ctx.record.model_note = check_models(ctx.spec)
        check = ctx.spec.adapters.preflight
        if check:
            from kitchen.config.catalog import load_target

            load_target(check, f"adapters={ctx.spec.adapters.name} preflight")(session_config(ctx.spec), ctx.spec.adapters.training)

    def execute(self, ctx: Context) -> None:
        client = ctx.training
        if hasattr(client, "set_checkpoint_dir"):
            client.set_checkpoint_dir(ctx.run_dir / "checkpoints")
        config = session_config(ctx.spec)
        commit = recorded_model_commit(ctx)
        if commit:
            config = dataclasses.replace(config, model_commit=commit)
            asked = f"model_revision={ctx.spec.model_revision}" if ctx.spec.model_revision else "the default branch"
            ctx.emit(ev.RUN_INFO, message=f"resume: loading {ctx.spec.model} at commit {commit}, the one this run "
                     f"recorded, not what {asked} points to now (pass another model_revision= to change the base on purpose)")
        facts = client.start_session(config)
        for message in facts.pop("warnings", None) or []:  # backend warnings (e.g. lora_rank > hidden size)
            ctx.emit(ev.RUN_WARNING, message=message)
        ctx.record.session = facts
        session = ctx.use(Session)
        session.tokenizer = client.get_tokenizer()
        session.renderer = make_renderer(ctx.spec, session.tokenizer)
        shown = ("model", "device", "dtype", "threads", "lora_rank", "trainable_params", "total_params", "load_seconds",
                 "precision", "cpu_bf16", "micro_batch_size", "max_tokens_per_micro_batch", "micro_batch_budget",
                 "loss_chunk_tokens", "fused_loss",
                 "loss_chunking_off", "activation_checkpointing",
                 "padding_free", "quantization", "world_size", "parallel")
        summary = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items() if k in shown)
        ctx.emit(ev.RUN_INFO, message=f"session: {summary}")


def recorded_model_commit(ctx: Context) -> str | None:
    """On resume, the hub commit the run trained on, so a branch that moved since cannot change the base.

    The checkpoint being restored records the commit its weights were trained against
    (run.json's ``model_base`` too, once an attempt has ended). None for a fresh run, a
    non-hub model, or when the resume changes ``model=`` or ``model_revision=`` on purpose.
    """
    spec = ctx.spec
    if not (spec.resume or spec.resume_from):
        return None
    recorded = (ctx.progress.resume_from or {}).get("base_model")
    if not recorded:  # no checkpoint yet: what the last attempt recorded in run.json
        from kitchen.runs.rundir import RunDir

        base = (RunDir(ctx.run_dir).read_info() or {}).get("model_base") or {}
        if base.get("kind") != "hub":
            return None
        recorded = {"model": base.get("repo_id"), "revision": base.get("revision"), "commit": base.get("commit")}
    if recorded.get("model") != spec.model or recorded.get("revision") != spec.model_revision:
        return None
    return recorded.get("commit") or None


class Restore(Stage):
    """On resume=true, load the last complete checkpoint: weights, optimizer, RNG, step."""

    def execute(self, ctx: Context) -> None:
        record = ctx.progress.resume_from
        if not record:
            return
        ref = CheckpointRef(name=record["name"], path=record["path"], step=record["step"])
        ctx.training.load_state(ref, with_optimizer=True)
        note = getattr(ctx.training, "resume_note", None)  # the world size changed since the checkpoint
        if note:
            ctx.emit(ev.RUN_WARNING, message=note)
        changed = getattr(ctx.training, "resume_facts", None)  # e.g. the auto micro-batch budget the checkpoint kept
        if isinstance(changed, dict) and changed:
            ctx.record.session = {**(ctx.record.session or {}), **changed}
            if changed.get("micro_batch_budget"):
                ctx.emit(ev.RUN_INFO, message=f"resume: micro_batch_budget={changed['micro_batch_budget']}")
        ctx.progress.step = record["step"]
        ctx.progress.last_checkpoint_step = record["step"]
        if record.get("evaluated") or _eval_logged_at(ctx, record["step"]):
            ctx.progress.last_eval_step = record["step"]  # the "before" eval skips it: its row is logged already
        if record.get("data_position"):  # a streamed dataset continues where this checkpoint left it
            ctx.progress.data_positions = {record["step"]: record["data_position"]}
        ctx.emit(ev.RUN_INFO, message=f"resumed from checkpoint {record['name']} at step {record['step']}")


def _eval_logged_at(ctx: Context, step: int) -> bool:
    """Whether metrics.jsonl holds a test row at ``step`` (the final eval comes after that step's checkpoint)."""
    from kitchen.telemetry.metrics_store import read_metrics

    return any(row.get("split") == "test" and row.get("step") == step for row in read_metrics(ctx.run_dir / "metrics.jsonl"))
