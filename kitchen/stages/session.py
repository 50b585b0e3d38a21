"""Session stages: open the backend session, and restore a checkpoint on resume."""

from __future__ import annotations

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.ports.types import CheckpointRef, LoraConfig, SessionConfig
from kitchen.telemetry import events as ev


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
        # --- issue 11 keys
        micro_batch_size=spec.micro_batch_size, max_tokens_per_micro_batch=spec.max_tokens_per_micro_batch,
        activation_checkpointing=spec.activation_checkpointing, padding_free=spec.padding_free,
        mixed_precision=spec.mixed_precision, quantization=spec.quantization,
    )


@register_stage("init_session")
class InitSession(Stage):
    """Load the base model on the backend and build the renderer for its tokenizer."""

    def execute(self, ctx: Context) -> None:
        from kitchen.train.renderers import build_renderer

        client = ctx.training
        if hasattr(client, "set_checkpoint_dir"):
            client.set_checkpoint_dir(ctx.run_dir / "checkpoints")
        facts = client.start_session(session_config(ctx.spec))
        ctx.metadata["session"] = facts
        tokenizer = client.get_tokenizer()
        ctx.state["tokenizer"] = tokenizer
        ctx.state["renderer"] = build_renderer(ctx.spec.renderer, tokenizer, ctx.spec.train_on_what, ctx.spec.max_length)
        shown = ("model", "device", "dtype", "threads", "lora_rank", "trainable_params", "total_params", "load_seconds",
                 # --- issue 11: scale options in the session line
                 "precision", "cpu_bf16", "micro_batch_size", "max_tokens_per_micro_batch", "activation_checkpointing",
                 "padding_free", "quantization", "world_size", "parallel")
        summary = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items() if k in shown)
        ctx.emit(ev.RUN_INFO, message=f"session: {summary}")


@register_stage("restore")
class Restore(Stage):
    """On resume=true, load the last complete checkpoint: weights, optimizer, RNG, step."""

    def execute(self, ctx: Context) -> None:
        record = ctx.state.get("resume_record")
        if not record:
            return
        ref = CheckpointRef(name=record["name"], path=record["path"], step=record["step"])
        ctx.training.load_state(ref, with_optimizer=True)
        note = getattr(ctx.training, "resume_note", None)  # --- issue 11: world size changed since the checkpoint
        if note:
            ctx.emit(ev.RUN_WARNING, message=note)
        ctx.state["step"] = record["step"]
        ctx.state["last_checkpoint_step"] = record["step"]
        ctx.emit(ev.RUN_INFO, message=f"resumed from checkpoint {record['name']} at step {record['step']}")
