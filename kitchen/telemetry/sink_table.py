"""The sinks kitchen ships: short name -> ``_target_``, the modules it needs, its extra.

The one table of them. It lives apart from :mod:`kitchen.telemetry.sinks` and imports
nothing of kitchen, because :mod:`kitchen.config.catalog` lists its names (``kitchen
plugins``, did-you-mean) at import time and ``sinks`` itself reaches back into the
catalog for plugin sinks; a leaf module keeps that free of import cycles and of torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SinkEntry:
    """A shipped sink: the node to instantiate and what it needs installed."""

    target: str
    requires: tuple[str, ...] = ()  # importable module names
    extra: str | None = None  # the crucible-kitchen extra that installs them
    about: str = ""


BUILTIN_SINKS: dict[str, SinkEntry] = {
    "console": SinkEntry("kitchen.telemetry.sinks.console_sink", about="Rich progress bar on a terminal, plain lines otherwise"),
    "jsonl": SinkEntry("kitchen.telemetry.sinks.jsonl_sink", about="events.jsonl and metrics.jsonl in the run dir"),
    "wandb": SinkEntry("kitchen.telemetry.trackers.wandb_sink.WandbSink", ("wandb",), "wandb", "Weights & Biases run (WANDB_MODE=offline works)"),
    "tensorboard": SinkEntry("kitchen.telemetry.trackers.tensorboard_sink.TensorBoardSink", ("tensorboard",), "tensorboard", "TensorBoard event files in RUN_DIR/tensorboard"),
    "mlflow": SinkEntry("kitchen.telemetry.trackers.mlflow_sink.MlflowSink", ("mlflow", "sqlalchemy"), "mlflow", "MLflow run (MLFLOW_TRACKING_URI)"),
    "prometheus": SinkEntry("kitchen.telemetry.trackers.prometheus_sink.PrometheusSink", ("prometheus_client",), "prometheus", "live gauges on a loopback /metrics port"),
}
