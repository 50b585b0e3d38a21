"""Persistence stages: checkpoints for exact resume, and the final weights."""

from __future__ import annotations

import time

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.rundir import RunDir
from kitchen.stages.train import drain, outside_training
from kitchen.telemetry import events as ev


def save_checkpoint(ctx: Context) -> None:
    """Settle in-flight steps, save backend state, then commit one index line."""
    drain(ctx)
    step = ctx.step
    if step == 0 or ctx.state.get("last_checkpoint_step") == step:
        return
    name = f"step_{step:06d}"
    ref = ctx.training.save_state(name, step)
    record = {"name": name, "step": step, "path": ref.path, "epoch": ctx.state.get("epoch", 0), "time": time.time()}
    RunDir(ctx.run_dir).add_checkpoint(record)
    ctx.state["last_checkpoint_step"] = step
    ctx.emit(ev.TRAINING_CHECKPOINT, step=step, name=name, path=ref.path)


@register_stage("checkpoint")
class Checkpoint(Stage):
    @outside_training
    def execute(self, ctx: Context) -> None:
        save_checkpoint(ctx)


@register_stage("save_weights")
class SaveWeights(Stage):
    """Write ``final/``: weights that load with plain transformers (plus the LoRA adapter)."""

    def execute(self, ctx: Context) -> None:
        drain(ctx)
        where = ctx.training.save_weights(str(RunDir(ctx.run_dir).final))
        ctx.metadata["final_weights"] = where
        ctx.emit(ev.RUN_INFO, message=f"final weights: {where}")
        # issue 9: model cards (recipe, data, final metrics) and push_to_hub; see kitchen/publish.py
        from kitchen.publish import finish_final

        finish_final(ctx, where)
