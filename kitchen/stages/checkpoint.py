"""Persistence stages: checkpoints for exact resume, and the final weights.

Both are written into the run directory first. With ``checkpoint_mirror=URL`` each
committed checkpoint, its index line, config.yaml and the final weights are then copied through a
BlobStore (a folder, or any fsspec URL such as ``s3://bucket/runs/x``), keyed by their
path inside the run directory, so the mirror is a run directory of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitchen.engine.context import Context
from kitchen.engine.pipeline import outside_training
from kitchen.engine.stage import Stage
from kitchen.runs.rundir import RunDir
from kitchen.telemetry import events as ev


@dataclass
class Mirror:
    store: Any = None


def mirror(ctx: Context, *paths: str | Path) -> None:
    """Copy files or folders of the run dir to ``checkpoint_mirror`` (no-op when unset or not local)."""
    url = ctx.spec.checkpoint_mirror
    if not url:
        return
    from kitchen.adapters.blobs import open_blob_store, put_tree

    state = ctx.use(Mirror)
    if state.store is None:
        state.store = open_blob_store(url)
    root = Path(ctx.run_dir).resolve()
    for given in map(Path, paths):
        path = _inside_run_dir(root, given)
        if path is None:
            continue
        key = path.relative_to(root).as_posix()
        if path.is_dir():
            put_tree(state.store, path, key)
        else:
            state.store.put_file(path, key)


def _inside_run_dir(root: Path, path: Path) -> Path | None:
    """``path`` as an existing file or folder of the run dir ``root`` (resolved), else None.

    Callers pass both kinds of relative path: RunDir's own (``runs/x/config.yaml``, relative
    to the working directory, as a relative ``run_dir`` makes them) and a backend's checkpoint
    path (``checkpoints/step_000002``, relative to the run dir). Joining the run dir onto the
    first kind named a file that does not exist, so a relative run dir mirrored almost nothing.
    """
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, root / path]
    for candidate in candidates:
        candidate = candidate.resolve()
        if candidate.exists() and candidate.is_relative_to(root):
            return candidate
    return None


def save_checkpoint(ctx: Context) -> None:
    """Settle in-flight steps, save backend state, then commit one index line."""
    ctx.pipeline.drain()
    step = ctx.step
    if step == 0 or ctx.progress.last_checkpoint_step == step:
        return
    name = f"step_{step:06d}"
    ref = ctx.training.save_state(name, step)
    record = {"name": name, "step": step, "path": ref.path, "epoch": ctx.progress.epoch, "time": time.time()}
    if ctx.progress.last_eval_step == step:  # a resume from here must not evaluate this step again
        record["evaluated"] = True
    if step in ctx.progress.data_positions:  # dataset_streaming: where the stream resumes
        record["data_position"] = ctx.progress.data_positions[step]
    commit = ctx.record.model_commit
    if commit:  # the hub commit these weights were trained against: a resume loads exactly it
        record["base_model"] = {"model": ctx.spec.model, "revision": ctx.spec.model_revision, "commit": commit}
    rundir = RunDir(ctx.run_dir)
    rundir.add_checkpoint(record)
    ctx.progress.last_checkpoint_step = step
    mirror(ctx, ref.path, rundir.index, rundir.config)
    ctx.emit(ev.TRAINING_CHECKPOINT, step=step, name=name, path=ref.path)


class Checkpoint(Stage):
    """Save everything exact resume needs (weights, optimizer, RNG) and index it."""

    @outside_training
    def execute(self, ctx: Context) -> None:
        save_checkpoint(ctx)


class SaveWeights(Stage):
    """Write ``final/``: weights that load with plain transformers (plus the LoRA adapter)."""

    @outside_training
    def execute(self, ctx: Context) -> None:
        where = ctx.training.save_weights(str(RunDir(ctx.run_dir).final))
        ctx.record.final_weights = where
        mirror(ctx, where)
        ctx.emit(ev.RUN_INFO, message=f"final weights: {where}")
        from kitchen.outputs.publish import finish_final  # model cards (recipe, data, final metrics) and push_to_hub

        finish_final(ctx, where)
        ctx.emit(ev.ARTIFACT_SAVED, kind="weights", path=str(where), step=ctx.step)  # trackers log the final weights
