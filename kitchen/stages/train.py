"""Training-step stages, pipelined.

``forward_backward`` and ``optim_step`` only submit work and queue the futures;
``log_step`` awaits the oldest step once more than ``pipeline_depth`` steps are in
flight. On a local backend the futures are already resolved, so this costs nothing;
on a remote backend step k+1 is on the wire before step k's result is awaited.
Anything that needs the weights settled (evaluation, checkpoints) calls ``drain``.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from dataclasses import dataclass
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterator

from kitchen.engine.context import Context
from kitchen.engine.stage import Stage, register_stage
from kitchen.errors import TrainingDiverged
from kitchen.ports.types import AdamParams
from kitchen.telemetry import events as ev


@dataclass
class InFlight:
    step: int  # 1-based optimizer step number
    epoch: int
    tokens: int  # trained (nonzero-weight) tokens
    forward_backward: Future
    input_tokens: int = 0  # every token the model processed; throughput counts these
    optim: Future | None = None
    lr: float = 0.0


@contextmanager
def clock_paused(ctx: Context) -> Iterator[None]:
    """Evaluation, previews and checkpoints are not training: keep them out of tokens/s."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        clock = ctx.state.get("clock")
        if clock is not None:
            clock["paused"] = clock.get("paused", 0.0) + time.perf_counter() - t0


def outside_training(execute: Callable) -> Callable:
    """Decorate a stage's ``execute``: settle in-flight steps, then keep the rest out of tokens/s."""

    @functools.wraps(execute)
    def wrapper(self: Stage, ctx: Context) -> None:
        drain(ctx)
        with clock_paused(ctx):
            execute(self, ctx)

    return wrapper


def pending(ctx: Context) -> deque[InFlight]:
    queue = ctx.state.get("pending")
    if queue is None:
        queue = ctx.state["pending"] = deque()
    return queue


def adam_params(ctx: Context, lr: float) -> AdamParams:
    s = ctx.spec
    return AdamParams(learning_rate=lr, beta1=s.beta1, beta2=s.beta2, eps=s.eps, weight_decay=s.weight_decay, grad_clip_norm=s.grad_clip_norm)


def current_lr(ctx: Context, step0: int) -> float:
    from kitchen.train.schedules import lr_at

    s = ctx.spec
    return lr_at(step0, ctx.state["total_steps"], s.learning_rate, s.lr_schedule, s.warmup_steps, s.min_lr_ratio)


def finish(ctx: Context, item: InFlight) -> None:
    """Await one in-flight step, check it, and publish its metrics."""
    result = item.forward_backward.result()
    opt = item.optim.result() if item.optim is not None else None
    if not math.isfinite(result.loss):
        last = ctx.state.get("last_checkpoint_step")
        kept = f"The last good checkpoint (step {last}) is kept; resume from it with resume=true after lowering learning_rate." if last else "No checkpoint was written before it."
        raise TrainingDiverged(f"The loss became {result.loss} at step {item.step}. Training stopped. {kept}")
    now = time.perf_counter()
    clock = ctx.state.setdefault("clock", {"t0": now, "tokens": 0})
    clock["tokens"] += item.input_tokens or item.tokens
    elapsed = max(now - clock["t0"] - clock.get("paused", 0.0), 1e-9)
    metrics = {
        "step": item.step,
        "total_steps": ctx.state["total_steps"],
        "epoch": item.epoch,
        "loss": result.loss,
        "lr": item.lr,
        "tokens": item.tokens,
        "tokens_per_s": clock["tokens"] / elapsed,
        "elapsed_s": elapsed,
    }
    for key, value in result.metrics.items():
        if key not in metrics and isinstance(value, (int, float)):
            metrics[key] = value
    if opt is not None:
        for key, value in opt.metrics.items():
            if key not in metrics and key != "learning_rate":  # already reported as lr
                metrics[key] = value
    ctx.metrics["loss"] = result.loss
    ctx.state.setdefault("losses", []).append((item.step, result.loss))
    ctx.emit(ev.TRAINING_STEP, **metrics)


def drain(ctx: Context) -> None:
    queue = pending(ctx)
    while queue:
        finish(ctx, queue.popleft())


def submit(ctx: Context, datums: list, loss_fn: str = "cross_entropy", loss_fn_config: dict | None = None,
           wrap: Callable[[Future], Future] | None = None) -> InFlight:
    """Send one step's forward_backward and queue it for ``optim_step`` / ``log_step``.

    ``wrap`` lets a workflow post-process the result (e.g. DPO replaces the surrogate loss).
    """
    if "clock" not in ctx.state:  # throughput counts from the first submitted step
        ctx.state["clock"] = {"t0": time.perf_counter(), "tokens": 0}
    if loss_fn_config:
        future = ctx.training.forward_backward(datums, loss_fn, loss_fn_config)
    else:
        future = ctx.training.forward_backward(datums, loss_fn)
    item = InFlight(
        step=ctx.step + 1,
        epoch=getattr(ctx.state.get("batch"), "epoch", 0),
        tokens=sum(d.num_loss_tokens() for d in datums),
        forward_backward=wrap(future) if wrap else future,
        input_tokens=sum(d.length for d in datums),
    )
    pending(ctx).append(item)
    return item


@register_stage("forward_backward")
class ForwardBackward(Stage):
    def execute(self, ctx: Context) -> None:
        submit(ctx, ctx.state["batch_data"])


@register_stage("optim_step")
class OptimStep(Stage):
    def execute(self, ctx: Context) -> None:
        item = pending(ctx)[-1]
        item.lr = current_lr(ctx, ctx.step)
        item.optim = ctx.training.optim_step(adam_params(ctx, item.lr))
        ctx.state["step"] = item.step


@register_stage("log_step")
class LogStep(Stage):
    """Publish finished steps, keeping at most ``pipeline_depth`` in flight."""

    def execute(self, ctx: Context) -> None:
        queue = pending(ctx)
        depth = ctx.spec.pipeline_depth
        while len(queue) > depth:
            finish(ctx, queue.popleft())


@register_stage("drain")
class Drain(Stage):
    def execute(self, ctx: Context) -> None:
        drain(ctx)


@register_stage("end_epoch")
class EndEpoch(Stage):
    def execute(self, ctx: Context) -> None:
        ctx.emit(ev.TRAINING_EPOCH, epoch=ctx.state["epoch"], step=ctx.step)
