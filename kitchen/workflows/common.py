"""Pieces every training workflow spells the same way, so each workflow reads as its algorithm.

A plugin's workflow uses them too::

    nodes=(
        stage(OpenSession), stage(MySetup),
        *restore_and_evaluate(my_evaluators),
        loop("step", over=steps, body=[stage(MyStep), *periodic()]),
        *finish(),
    )
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from kitchen.engine.ir import Node, conditional, every, loop, stage
from kitchen.stages.checkpoint import Checkpoint, SaveWeights
from kitchen.stages.data import batches, end_epoch, epochs
from kitchen.stages.evaluate import Evaluate, PrepareEvaluators
from kitchen.stages.session import Restore


def restore_and_evaluate(evaluators: Callable[[Any], list[Any]] | None) -> list[Node]:
    """Restore the last checkpoint on resume, build the evaluators, evaluate (and preview) before training."""
    return [stage(Restore), stage(PrepareEvaluators, builtin=evaluators), stage(Evaluate, tag="before")]


def periodic() -> list[Node]:
    """Inside the step loop: evaluate every ``eval_every`` steps, checkpoint every ``save_every``."""
    return [conditional(every("eval_every"), [stage(Evaluate)]), conditional(every("save_every"), [stage(Checkpoint)])]


def epochs_of_batches(step: Sequence[Node]) -> Node:
    """``for epoch: for batch: step + periodic`` over the deterministic batch plan."""
    return loop("epoch", over=epochs, body=[loop("batch", over=batches, body=[*step, *periodic()]), stage(end_epoch)])


def finish() -> list[Node]:
    """Evaluate (and preview) after training, write the final checkpoint and the final weights."""
    return [stage(Evaluate, tag="after"), stage(Checkpoint, label="checkpoint (final)"), stage(SaveWeights)]
