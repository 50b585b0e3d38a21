"""Learning-rate schedules: pure functions of the step number.

Steps are 0-indexed: a run of ``total_steps`` optimizer steps calls ``lr_at`` with
``step = 0 .. total_steps - 1``.

Warmup. For ``step < warmup_steps`` the rate rises linearly and reaches ``base_lr`` on
the last warmup step: ``lr = base_lr * (step + 1) / warmup_steps``. (Starting at
``base_lr / warmup_steps`` rather than at exactly 0 means no optimizer step is wasted
on a zero learning rate.)

Decay. After warmup, ``progress = (step - warmup_steps) / (total_steps - warmup_steps)``
runs from 0 on the first post-warmup step towards 1 (clamped to [0, 1]), and

* ``constant``: ``lr = base_lr``
* ``linear``:   ``lr = base_lr * (1 - (1 - min_lr_ratio) * progress)``
* ``cosine``:   ``lr = base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * progress)))``

so the decay reaches ``base_lr * min_lr_ratio`` at ``step == total_steps`` (one past the
last step, the usual Hugging Face / tinker-cookbook convention); the last step taken
runs at a rate just above the floor. Steps past the end keep the floor.
"""

from __future__ import annotations

import math

SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")


def validate_schedule(schedule: str) -> str:
    """Return ``schedule`` if it is a known name, else raise ValueError listing them."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    return schedule


def lr_multiplier(
    step: int,
    total_steps: int,
    schedule: str = "constant",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> float:
    """The factor in [0, 1] that multiplies ``base_lr`` at ``step`` (see module doc)."""
    validate_schedule(schedule)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:  # warmup covers the whole run: nothing left to decay
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    # cosine
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for 0-indexed ``step`` of a ``total_steps`` run (see module doc).

    Raises ValueError on an unknown schedule name or out-of-range arguments.
    """
    if base_lr < 0 or not math.isfinite(base_lr):
        raise ValueError(f"base_lr must be a finite number >= 0, got {base_lr}")
    return base_lr * lr_multiplier(step, total_steps, schedule, warmup_steps, min_lr_ratio)


def lr_sequence(
    total_steps: int,
    base_lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> list[float]:
    """``[lr_at(s, ...) for s in range(total_steps)]``: handy for plots and tests."""
    return [lr_at(s, total_steps, base_lr, schedule, warmup_steps, min_lr_ratio) for s in range(total_steps)]
