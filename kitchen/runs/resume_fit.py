"""What a resume may change: checked before any weights load.

A checkpoint holds LoRA (or full) weights of one shape and the step it reached. A resume
that changes the shape (``lora_rank=8`` on a rank-16 run) used to load the model and then
fail with a raw tensor-size error that never named the key; one whose ``max_steps`` is
below the checkpoint's step silently "completed" without training. Both are refused here,
in preflight, so ``kitchen validate`` says the same as ``kitchen run``/``kitchen resume``.
"""

from __future__ import annotations

from typing import Any

import yaml

from kitchen.errors import ConfigError
from kitchen.runs.rundir import RunDir

# Keys whose change alters the shape or the set of trained tensors in a checkpoint.
SHAPE_KEYS = ("model", "lora_rank", "lora_targets", "train_mlp", "train_attn", "train_unembed")


def _saved_config(rundir: RunDir) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(rundir.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # the run-dir checks report an unreadable config.yaml on their own
    return data if isinstance(data, dict) else None


def check_resume_fits(rundir: RunDir, spec: Any, record: dict[str, Any] | None) -> None:
    """Refuse a resume whose config cannot continue the checkpoint ``record``."""
    saved = _saved_config(rundir)
    if saved is not None:
        changed = [(k, saved[k], getattr(spec, k)) for k in SHAPE_KEYS
                   if k in saved and saved[k] is not None and saved[k] != getattr(spec, k)]
        if changed:
            said = ", ".join(f"{k}={new} (the run has {k}={old})" for k, old, new in changed)
            raise ConfigError(
                f"Cannot resume {rundir.path} with {said}: its checkpoints hold weights of the run's own shape, "
                f"which do not load into the new one. Resume without changing {', '.join(k for k, _, _ in changed)}, "
                "or start a new run in another run_dir to train with the new value."
            )
    step = int((record or {}).get("step") or 0)
    if record is not None and spec.max_steps is not None and spec.max_steps < step:
        raise ConfigError(
            f"max_steps={spec.max_steps} is below step {step} of the checkpoint this resume starts from "
            f"({record.get('name')}), so there is nothing left to train. Pass max_steps={step} or more to extend "
            "the run, or resume_from=an earlier checkpoint (`kitchen runs` and checkpoints/checkpoints.jsonl list them)."
        )


__all__ = ["SHAPE_KEYS", "check_resume_fits"]
