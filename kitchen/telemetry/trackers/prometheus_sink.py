"""Prometheus: the live run's gauges, counters and histograms on a loopback /metrics port.

Built on the official ``prometheus_client`` (the ``[prometheus]`` extra) with a registry of
its own, served by ``start_http_server`` on ``host`` (127.0.0.1 unless told otherwise) and
``port`` (0 picks a free one; the bound URL goes to run.json["trackers"]["prometheus"] and
the log). A step only keeps a reference to its payload and bumps two counters (inline on
the training thread, well under a microsecond); the series are built when scraped, by
prometheus_client's own server thread.

Series (all prefixed ``kitchen_``): ``step``, ``total_steps``, ``loss``, ``learning_rate``,
``tokens_per_second``, ``steps_total`` and ``tokens_total`` (counters),
``metric{name=...}`` for other per-step numbers, ``eval{metric=...,split=...}``,
``stage_duration_seconds{stage=...}`` (histogram of top-level stage durations) and
``up`` (1 while the run is live, 0 once it has stopped).
"""

from __future__ import annotations

import logging
from typing import Any

from kitchen.telemetry.events import EVAL_RESULT, STAGE_STOP, TRAINING_STEP, WORKFLOW_START, WORKFLOW_STOP, Event
from kitchen.telemetry.sinks import SinkContext, numeric_items

log = logging.getLogger("kitchen.telemetry")
_OWN = frozenset({"step", "total_steps", "epoch", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s"})
_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, float("inf"))


class _StepCollector:
    """Builds the per-step series from the last ``training.step`` payload at scrape time.

    Why: updating a handful of prometheus_client metrics on every step costs ~30 µs (locks
    and label lookups); keeping a reference to the payload costs well under 1 µs, and a
    scrape (every few seconds) pays for the formatting instead.
    """

    def __init__(self, sink: "PrometheusSink") -> None:
        self.sink = sink

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sink, d = self.sink, self.sink.last_step
        yield CounterMetricFamily("kitchen_steps", "optimizer steps done in this process", value=sink.steps)
        yield CounterMetricFamily("kitchen_tokens", "tokens trained on in this process", value=sink.tokens)
        if d is None:
            return
        for name, key, doc in (("kitchen_step", "step", "last completed optimizer step"),
                               ("kitchen_total_steps", "total_steps", "steps this run will take"),
                               ("kitchen_loss", "loss", "training loss of the last step"),
                               ("kitchen_learning_rate", "lr", "learning rate of the last step"),
                               ("kitchen_tokens_per_second", "tokens_per_s", "training throughput of the last step")):
            value = d.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield GaugeMetricFamily(name, doc, value=value)
        extras = GaugeMetricFamily("kitchen_metric", "other per-step numbers (reward_mean, grad_norm...)", labels=["name"])
        for k, v in numeric_items(d, _OWN):
            if ":" not in k:
                extras.add_metric([k], v)
        yield extras

    def describe(self) -> Any:
        return []


class PrometheusSink:
    def __init__(self, run: SinkContext, port: int = 0, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

        self.registry = reg = CollectorRegistry()
        self.last_step: dict[str, Any] | None = None
        self.steps = 0
        self.tokens = 0.0
        labels = {"recipe": run.recipe or "", "workflow": run.workflow or "", "backend": run.backend or ""}
        self.up = Gauge("kitchen_up", "1 while the run is live", list(labels), registry=reg).labels(**labels)
        self.eval = Gauge("kitchen_eval", "last evaluation result", ["metric", "split"], registry=reg)
        self.stage = Histogram("kitchen_stage_duration_seconds", "duration of top-level stages", ["stage"],
                               buckets=_BUCKETS, registry=reg)
        reg.register(_StepCollector(self))
        self.server, self.thread = start_http_server(port, addr=host, registry=reg)
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}/metrics"
        run.remember("prometheus", {"url": self.url})
        log.info("prometheus metrics at %s", self.url)
        self.up.set(1)
        self._handlers = {TRAINING_STEP: self._on_step, EVAL_RESULT: self._on_eval, STAGE_STOP: self._on_stage,
                          WORKFLOW_START: self._on_start, WORKFLOW_STOP: self._on_stop}

    def handle(self, event: Event) -> None:
        fn = self._handlers.get(event.name)
        if fn is not None:
            fn(event.data)

    def _on_start(self, d: dict[str, Any]) -> None:
        self.up.set(1)

    def _on_step(self, d: dict[str, Any]) -> None:
        self.last_step = d
        self.steps += 1
        tokens = d.get("tokens")
        if type(tokens) is int or type(tokens) is float:
            self.tokens += tokens

    def _on_eval(self, d: dict[str, Any]) -> None:
        split = str(d.get("split") or "")
        for k, v in numeric_items(d.get("metrics") or {}):
            self.eval.labels(metric=k, split=split).set(v)

    def _on_stage(self, d: dict[str, Any]) -> None:
        dur = d.get("duration_s")
        if isinstance(dur, (int, float)):
            self.stage.labels(stage=str(d.get("stage"))).observe(dur)

    def _on_stop(self, d: dict[str, Any]) -> None:
        self.up.set(0)

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
