"""Weights & Biases: run config, per-step metrics, eval results, a samples table, weights.

``wandb.init`` runs on the sink's background thread (it starts W&B's service process,
which takes seconds), and so does every ``log`` call. What goes in:

* the redacted run spec (config.yaml's content) as the run config, tags recipe /
  workflow / backend / model / git sha;
* ``train/<metric>`` per step and ``eval/<metric>`` per evaluation, both against the
  kitchen step (``define_metric(..., step_metric="step")``, so a resumed run that
  re-logs steps after its checkpoint is not dropped by W&B's monotonic step rule);
* sample completions as one ``samples`` table (step, tag, prompt, completion, reward);
* the final weights as a ``model`` artifact holding a ``file://`` reference (no upload);
* the final numbers in the run summary.

The run id is generated here and stored with its name in run.json["trackers"]["wandb"]
before the run starts, so ``kitchen resume`` reopens the same W&B run (``resume="allow"``).
Files go to ``RUN_DIR/wandb``. ``WANDB_MODE=offline`` (or ``mode: offline``) needs no
account; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads later. W&B's stdout capture and
its own banner are off (the console belongs to kitchen), and so is its host metadata, which
would record the command line (where a key might have been typed).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from kitchen.telemetry.events import ARTIFACT_SAVED, EVAL_RESULT, SAMPLE, TRAINING_STEP, WORKFLOW_STOP, Event, RunStatus
from kitchen.telemetry.sinks import BackgroundSink, SinkContext, numeric_items

_SKIP = ("step", "total_steps", "epoch")


def _new_id() -> str:
    """A W&B-style run id (8 lowercase alphanumerics), chosen here so run.json has it at once."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbSink(BackgroundSink):
    wants = frozenset({TRAINING_STEP, EVAL_RESULT, SAMPLE, WORKFLOW_STOP, ARTIFACT_SAVED})

    def __init__(self, run: SinkContext, project: str | None = None, entity: str | None = None, name: str | None = None,
                 mode: str | None = None, group: str | None = None, tags: list[str] | None = None) -> None:

        self.run = run
        previous = run.recall("wandb") or {}
        previous = previous if isinstance(previous, dict) else {}
        self.id = previous.get("id") or _new_id()
        # W&B's own variables fill what the config leaves unset (WANDB_ENTITY and WANDB_MODE are read
        # by wandb.init itself when entity/mode are None); a resumed run keeps its first name and project
        env = os.environ
        self.name = previous.get("name") or name or env.get("WANDB_NAME") or Path(run.run_dir).name
        self.project = project or previous.get("project") or env.get("WANDB_PROJECT") or "crucible-kitchen"
        self.entity, self.mode, self.group = entity, mode, group or env.get("WANDB_RUN_GROUP")
        self.job_type = env.get("WANDB_JOB_TYPE") or "train"
        env_tags = [t.strip() for t in env.get("WANDB_TAGS", "").split(",") if t.strip()]
        self.tags = list(tags or []) + env_tags + [f"{k}:{v}" for k, v in run.tags().items() if k != "git_sha"]
        run.remember("wandb", {"id": self.id, "name": self.name, "project": self.project})
        self.wb: Any = None
        self._samples: list[list[Any]] = []
        self._exit_code = 1
        super().__init__()

    def start(self) -> None:
        import wandb

        # W&B's own convention: WANDB_DIR decides where its files go; the run dir only when it is unset
        wandb_dir = Path(os.environ.get("WANDB_DIR") or self.run.run_dir).expanduser()
        wandb_dir.mkdir(parents=True, exist_ok=True)
        config = dict(self.run.config)
        if self.run.git_sha:
            config["git_sha"] = self.run.git_sha
        self.wb = wandb.init(
            project=self.project, entity=self.entity, name=self.name, id=self.id, resume="allow", group=self.group,
            dir=str(wandb_dir), config=config, tags=self.tags, mode=self.mode, job_type=self.job_type,
            settings=wandb.Settings(console="off", silent=True, x_disable_meta=True, disable_git=True,
                                    save_code=False, x_disable_stats=True),
        )
        self.wb.define_metric("step", hidden=True)
        self.wb.define_metric("train/*", step_metric="step")
        self.wb.define_metric("eval/*", step_metric="step")

    def write(self, events: list[Event]) -> None:
        wb = self.wb
        for event in events:
            d = event.data
            step = d.get("step") if isinstance(d.get("step"), int) else None
            if event.name == TRAINING_STEP:
                row = {f"train/{k}": v for k, v in numeric_items(d, _SKIP) if ":" not in k}
                row["step"] = step
                wb.log(row)
            elif event.name == EVAL_RESULT:
                row = {f"eval/{k}": v for k, v in numeric_items(d.get("metrics") or {})}
                row["step"] = step
                wb.log(row)
            elif event.name == SAMPLE:
                self._samples.append([step, str(d.get("tag") or "sample"), str(d.get("prompt") or ""),
                                      str(d.get("completion") or ""), d.get("reward")])
            elif event.name == ARTIFACT_SAVED:
                self._log_artifact(d)
            elif event.name == WORKFLOW_STOP:
                self._exit_code = 0 if d.get("status") == RunStatus.COMPLETED else 1
                for k, v in numeric_items(d.get("final_metrics") or {}):
                    wb.summary[f"final/{k}"] = v
                wb.summary["status"] = str(d.get("status"))

    def _log_artifact(self, d: dict[str, Any]) -> None:
        import wandb

        path = Path(str(d.get("path"))).resolve()
        kind = str(d.get("kind") or "artifact")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.name}-{kind}")
        art = wandb.Artifact(safe, type="model" if kind == "weights" else kind,
                             metadata={"step": d.get("step"), "path": str(path)})
        art.add_reference(path.as_uri(), name=kind, checksum=False)
        self.wb.log_artifact(art)

    def finish(self) -> None:
        import wandb

        if self._samples:
            table = wandb.Table(columns=["step", "tag", "prompt", "completion", "reward"], data=self._samples)
            self.wb.log({"samples": table})
        self.wb.finish(exit_code=self._exit_code)

    def abort(self) -> None:
        if self.wb is not None:
            self.wb.finish(exit_code=1)
