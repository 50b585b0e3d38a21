"""TensorBoard: per-step scalars, eval scalars, sample completions as text, and hparams.

Files go to ``RUN_DIR/tensorboard`` (``log_dir=`` to change), written by torch's
``SummaryWriter`` (which needs the ``tensorboard`` package: the ``[tensorboard]`` extra) on
a background thread, so a slow disk never holds up a training step. Tags: ``train/loss``,
``train/lr``, ``train/<metric>``; ``eval/<metric>``; text ``samples/<tag>``. The run's
flattened config goes in as hyperparameters, with the final numbers as the hparams metrics,
so TensorBoard's HPARAMS tab compares runs side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kitchen.telemetry.events import ARTIFACT_SAVED, EVAL_RESULT, SAMPLE, TRAINING_STEP, WORKFLOW_STOP, Event
from kitchen.telemetry.sinks import BackgroundSink, SinkContext, flat_params, numeric_items

_SKIP = ("step", "total_steps", "epoch")


def _hparam_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return "None" if v is None else str(v)


class TensorBoardSink(BackgroundSink):
    wants = frozenset({TRAINING_STEP, EVAL_RESULT, SAMPLE, WORKFLOW_STOP, ARTIFACT_SAVED})

    def __init__(self, run: SinkContext, log_dir: str | None = None, flush_secs: int = 10) -> None:
        self.run = run
        self.log_dir = Path(log_dir) if log_dir else Path(run.run_dir) / "tensorboard"
        self.flush_secs = flush_secs
        self.writer: Any = None
        self._final: dict[str, float] = {}
        super().__init__()

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=self.flush_secs)
        self.run.remember("tensorboard", {"log_dir": str(self.log_dir)})

    def write(self, events: list[Event]) -> None:
        w = self.writer
        for event in events:
            d = event.data
            step = d.get("step")
            step = step if isinstance(step, int) else None
            if event.name == TRAINING_STEP:
                for k, v in numeric_items(d, _SKIP):
                    if ":" in k:
                        continue
                    w.add_scalar(f"train/{k}", v, global_step=step, walltime=event.time)
                    if k == "loss":
                        self._final["loss"] = v
            elif event.name == EVAL_RESULT:
                metrics = d.get("metrics") or {}
                for k, v in numeric_items(metrics):
                    w.add_scalar(f"eval/{k}", v, global_step=step, walltime=event.time)
                    self._final[k] = v
            elif event.name == SAMPLE:
                tag = str(d.get("tag") or "sample")
                reward = d.get("reward")
                text = f"**prompt**\n\n    {d.get('prompt')}\n\n**completion**\n\n    {d.get('completion')}"
                if reward is not None:
                    text += f"\n\n**reward** {reward}"
                w.add_text(f"samples/{tag}", text, global_step=step, walltime=event.time)
            elif event.name == ARTIFACT_SAVED:
                w.add_text(f"artifacts/{d.get('kind') or 'artifact'}", str(d.get("path")), global_step=step)
            elif event.name == WORKFLOW_STOP:
                for k, v in numeric_items(d.get("final_metrics") or {}):
                    self._final.setdefault(k, v)

    def finish(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        w = self.writer
        params = {k: _hparam_value(v) for k, v in flat_params(self.run.config, skip=("description",)).items()}
        metrics = {f"hparams/{k}": v for k, v in self._final.items()}
        for summary in hparams(params, metrics):
            w.file_writer.add_summary(summary)
        for k, v in metrics.items():
            w.add_scalar(k, v)
        w.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
