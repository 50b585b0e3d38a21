"""MLflow: params, per-step metrics, eval metrics, tags, and the run dir's records as artifacts.

The tracking store is MLflow's own choice: ``MLFLOW_TRACKING_URI`` (or ``tracking_uri=``),
so ``sqlite:///mlflow.db``, a file store or a tracking server all work. The run is created
when the sink is built (so its id is in run.json from the first moment; a resumed run
reopens the same MLflow run), everything else is written by a background thread in
batches with ``MlflowClient.log_batch``. Tags: recipe, workflow, backend, model, git_sha. The experiment: ``experiment=``, else
``MLFLOW_EXPERIMENT_ID`` / ``MLFLOW_EXPERIMENT_NAME``, else ``kitchen``.
At the end ``config.yaml`` and ``run.json`` are logged as artifacts and the run is ended
with FINISHED / FAILED / KILLED. The tracking URI is never written anywhere by kitchen
(it may carry credentials).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kitchen.telemetry.events import ARTIFACT_SAVED, EVAL_RESULT, TRAINING_STEP, WORKFLOW_STOP, Event, RunStatus
from kitchen.telemetry.sinks import BackgroundSink, SinkContext, flat_params, numeric_items

_SKIP = ("step", "total_steps", "epoch")
_BATCH = 900  # log_batch takes at most 1000 metrics per call
_STATUS = {RunStatus.COMPLETED: "FINISHED", RunStatus.INTERRUPTED: "KILLED"}  # MLflow's RunStatus names


def _metric_key(k: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / ; kitchen's "loss:sum"-style keys become "loss_sum"
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in k)


class MlflowSink(BackgroundSink):
    wants = frozenset({TRAINING_STEP, EVAL_RESULT, WORKFLOW_STOP, ARTIFACT_SAVED})

    def __init__(self, run: SinkContext, experiment: str | None = None, tracking_uri: str | None = None,
                 run_name: str | None = None, artifact_location: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.run = run
        self.client = MlflowClient(tracking_uri=tracking_uri)  # None: MLFLOW_TRACKING_URI, then MLflow's default
        # MLflow's own variables when the config names no experiment: MLFLOW_EXPERIMENT_ID (which must
        # exist), then MLFLOW_EXPERIMENT_NAME (created when missing), then "kitchen"
        exp_id = None if experiment else os.environ.get("MLFLOW_EXPERIMENT_ID")
        if exp_id:
            self.client.get_experiment(exp_id)  # raises, naming the id, when the store has no such experiment
        else:
            name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "kitchen"
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name, artifact_location=artifact_location)
        previous = run.recall("mlflow") or {}
        self.run_id = previous.get("run_id") if isinstance(previous, dict) else None
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            created = self.client.create_run(exp_id, run_name=run_name or Path(run.run_dir).name, tags=run.tags())
            self.run_id = created.info.run_id
            params = flat_params(run.config, skip=("description",))
            from mlflow.entities import Param

            items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])
        run.remember("mlflow", {"run_id": self.run_id, "experiment_id": exp_id})
        self._status = "FAILED"
        super().__init__()

    def write(self, events: list[Event]) -> None:
        from mlflow.entities import Metric

        metrics: list[Any] = []
        for event in events:
            d = event.data
            ts = int(event.time * 1000)
            step = d.get("step") if isinstance(d.get("step"), int) else 0
            if event.name == TRAINING_STEP:
                metrics.extend(Metric(_metric_key(k), v, ts, step) for k, v in numeric_items(d, _SKIP))
            elif event.name == EVAL_RESULT:
                metrics.extend(Metric(_metric_key(k), v, ts, step) for k, v in numeric_items(d.get("metrics") or {}))
            elif event.name == ARTIFACT_SAVED:
                self.client.set_tag(self.run_id, f"artifact.{d.get('kind') or 'artifact'}", str(d.get("path")))
            elif event.name == WORKFLOW_STOP:
                self._status = _STATUS.get(str(d.get("status")), "FAILED")
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _BATCH])

    def finish(self) -> None:
        run_dir = Path(self.run.run_dir)
        for name in ("config.yaml", "run.json"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, status=self._status, end_time=int(time.time() * 1000))

    def abort(self) -> None:
        self.client.set_terminated(self.run_id, status="FAILED")
