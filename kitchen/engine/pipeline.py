"""The step pipeline: one object owns submit / finish / drain, the depth and the tokens/s clock.

A stage that trains returns a :class:`StepOutput` (the datums, the loss function and
its config, and the algorithm's own metrics). The runner hands it to
:meth:`StepPipeline.submit`, which sends ``forward_backward`` and ``optim_step`` and
queues the step; once more than ``pipeline_depth`` steps are in flight the oldest is
awaited, checked and published as a ``training.step`` event. On a local backend the
futures are already resolved, so this costs nothing; on a remote backend step k+1 is on
the wire before step k's result is awaited. Anything that needs the weights settled
(evaluation, checkpoints, samplers) calls :meth:`StepPipeline.drain`, or is wrapped in
:func:`outside_training`.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from kitchen.errors import TrainingDiverged
from kitchen.ports.types import AdamParams, Datum, OptimizerSpec
from kitchen.telemetry import events as ev

if TYPE_CHECKING:
    from kitchen.engine.context import Context


@dataclass
class StepOutput:
    """What a training stage hands to the pipeline: one optimizer step's work.

    ``metrics`` are the algorithm's own numbers (reward, DPO accuracy...), published with
    the step before the backend's; ``loss`` replaces the backend's reported loss when the
    backend trains a surrogate (DPO's reweighted cross_entropy); ``drop_metrics`` names
    backend metrics that mean nothing for this algorithm.

    No ``datums`` means there was nothing to learn from this step (every RL group tied,
    nothing passed a rejection filter): the step is counted and its metrics published,
    but the backend is not called, so the weights and the optimizer state do not move.
    """

    datums: Sequence[Datum]
    loss_fn: str = "cross_entropy"
    loss_fn_config: Mapping[str, float] | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    loss: float | None = None
    drop_metrics: Sequence[str] = ()


@dataclass
class InFlight:
    step: int  # 1-based optimizer step number
    epoch: int
    output: StepOutput
    forward_backward: Future | None  # None: a skipped step (no datums)
    optim: Future | None
    lr: float
    tokens: int  # trained (nonzero-weight) tokens
    input_tokens: int  # every token the model processed; throughput counts these
    # perf_counter() when the step's last future completed. A step is published later (when
    # the window moves, or a drain before an evaluation), so timing it at publication gave
    # it the next step's time too: elapsed_s and the ETA ran one step off before each eval.
    done_at: float | None = None


class StepPipeline:
    """Submits training steps, keeps at most ``depth`` in flight, publishes finished ones."""

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.queue: deque[InFlight] = deque()
        self._t0: float | None = None
        self._paused = 0.0
        self._tokens = 0
        self._optimizer: OptimizerSpec | None = None  # the spec's, asked once

    # -- the training step ----------------------------------------------------------

    def submit(self, output: StepOutput) -> InFlight:
        """forward_backward + optim_step for one step; publish what falls out of the window."""
        ctx = self.ctx
        if self._t0 is None:  # throughput counts from the first submitted step
            self._t0 = time.perf_counter()
        datums = list(output.datums)
        training = ctx.training
        progress = ctx.progress
        lr = self.learning_rate(progress.step)
        fb = optim = None
        if datums:
            if output.loss_fn_config:
                fb = training.forward_backward(datums, output.loss_fn, dict(output.loss_fn_config))
            else:
                fb = training.forward_backward(datums, output.loss_fn)
            optim = training.optim_step(self.optim_params(lr))
        item = InFlight(
            step=progress.step + 1, epoch=progress.epoch, output=output, forward_backward=fb, optim=optim, lr=lr,
            tokens=sum(d.num_loss_tokens() for d in datums), input_tokens=sum(d.length for d in datums),
        )
        last = optim or fb
        if last is None:
            item.done_at = time.perf_counter()
        else:
            last.add_done_callback(lambda _f, item=item: setattr(item, "done_at", time.perf_counter()))
        progress.step = item.step
        for key, value in output.metrics.items():
            ctx.metrics[key] = value
        self.queue.append(item)
        depth = ctx.spec.pipeline_depth
        while len(self.queue) > depth:
            self.finish(self.queue.popleft())
        return item

    def drain(self) -> None:
        """Await every in-flight step (the weights then include all of them)."""
        while self.queue:
            self.finish(self.queue.popleft())

    def finish(self, item: InFlight) -> None:
        """Await one in-flight step, check it, and publish its metrics."""
        ctx = self.ctx
        result = item.forward_backward.result() if item.forward_backward is not None else None
        opt = item.optim.result() if item.optim is not None else None
        out = item.output
        loss = out.loss if out.loss is not None else (result.loss if result is not None else 0.0)
        if not math.isfinite(loss):
            last = ctx.progress.last_checkpoint_step
            kept = (f"The last good checkpoint (step {last}) is kept; resume from it with resume=true after lowering learning_rate."
                    if last else "No checkpoint was written before it.")
            ctx.progress.step = item.step  # the run stopped at this step, not at the later ones already in flight
            self.queue.clear()
            raise TrainingDiverged(f"The loss became {loss} at step {item.step}. Training stopped. {kept}")
        now = item.done_at if item.done_at is not None else time.perf_counter()  # a callback may still be running
        self._tokens += item.input_tokens or item.tokens
        elapsed = max(now - (self._t0 or now) - self._paused, 1e-9)
        metrics: dict[str, Any] = {
            "step": item.step,
            "total_steps": ctx.progress.total_steps,
            "epoch": item.epoch,
            "loss": loss,
            "lr": item.lr,
            "tokens": item.tokens,
            "tokens_per_s": self._tokens / elapsed,
            "elapsed_s": elapsed,
        }
        for key, value in out.metrics.items():
            metrics.setdefault(key, value)
        drop = out.drop_metrics
        for key, value in (result.metrics if result is not None else {}).items():
            if key not in metrics and key not in drop and isinstance(value, (int, float)):
                metrics[key] = value
        if opt is not None:
            for key, value in opt.metrics.items():
                if key not in metrics and key != "learning_rate":  # already reported as lr
                    metrics[key] = value
        ctx.metrics["loss"] = loss
        ctx.emit(ev.TRAINING_STEP, **metrics)

    # -- optimizer settings -----------------------------------------------------------

    def learning_rate(self, step0: int) -> float:
        from kitchen.train.schedules import lr_at

        s = self.ctx.spec
        total = self.ctx.progress.total_steps or (step0 + 1)
        return lr_at(step0, total, s.learning_rate, s.lr_schedule, s.warmup_steps, s.min_lr_ratio)

    def optim_params(self, lr: float) -> AdamParams:
        """This step's optimizer parameters: the workflow config's optimizer at the scheduled ``lr``."""
        if self._optimizer is None:
            self._optimizer = self.ctx.spec.optimizer()
        return self._optimizer.step(lr)

    # -- the throughput clock -----------------------------------------------------------

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Evaluation, previews and checkpoints are not training: keep them out of tokens/s."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._t0 is not None:
                self._paused += time.perf_counter() - t0


def outside_training(execute: Callable) -> Callable:
    """Decorate a stage's ``execute``: settle in-flight steps, then keep the rest out of tokens/s."""

    @functools.wraps(execute)
    def wrapper(self: Any, ctx: "Context") -> Any:
        ctx.pipeline.drain()
        with ctx.pipeline.paused():
            return execute(self, ctx)

    return wrapper
