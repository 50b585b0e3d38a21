"""Prometheus: the live run's gauges, counters and histograms on a loopback /metrics port.

Built on the official ``prometheus_client`` (the ``[prometheus]`` extra) with a registry of
its own, served by ``start_http_server`` on ``host`` (127.0.0.1 unless told otherwise) and
``port`` (0 picks a free one; the bound URL goes to run.json["trackers"]["prometheus"] and
the log). Updates are a few in-memory sets per event, so they run inline on the training
thread; scrapes are served by prometheus_client's own thread.

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


class PrometheusSink:
    def __init__(self, run: SinkContext, port: int = 0, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        self.registry = reg = CollectorRegistry()
        labels = {"recipe": run.recipe or "", "workflow": run.workflow or "", "backend": run.backend or ""}
        self.up = Gauge("kitchen_up", "1 while the run is live", list(labels), registry=reg).labels(**labels)
        self.step = Gauge("kitchen_step", "last completed optimizer step", registry=reg)
        self.total = Gauge("kitchen_total_steps", "steps this run will take", registry=reg)
        self.loss = Gauge("kitchen_loss", "training loss of the last step", registry=reg)
        self.lr = Gauge("kitchen_learning_rate", "learning rate of the last step", registry=reg)
        self.tps = Gauge("kitchen_tokens_per_second", "training throughput of the last step", registry=reg)
        self.steps = Counter("kitchen_steps", "optimizer steps done in this process", registry=reg)
        self.tokens = Counter("kitchen_tokens", "tokens trained on in this process", registry=reg)
        self.metric = Gauge("kitchen_metric", "other per-step numbers (reward_mean, grad_norm...)", ["name"], registry=reg)
        self.eval = Gauge("kitchen_eval", "last evaluation result", ["metric", "split"], registry=reg)
        self.stage = Histogram("kitchen_stage_duration_seconds", "duration of top-level stages", ["stage"],
                               buckets=_BUCKETS, registry=reg)
        self._metric_children: dict[str, Any] = {}
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
        step = d.get("step")
        if isinstance(step, int):
            self.step.set(step)
        total = d.get("total_steps")
        if isinstance(total, int):
            self.total.set(total)
        loss = d.get("loss")
        if isinstance(loss, (int, float)):
            self.loss.set(loss)
        lr = d.get("lr")
        if isinstance(lr, (int, float)):
            self.lr.set(lr)
        tps = d.get("tokens_per_s")
        if isinstance(tps, (int, float)):
            self.tps.set(tps)
        tokens = d.get("tokens")
        if isinstance(tokens, (int, float)) and tokens > 0:
            self.tokens.inc(tokens)
        self.steps.inc()
        if not d.keys() <= _OWN:  # extras beyond the common keys (reward_mean, grad_norm...)
            children = self._metric_children
            for k, v in numeric_items(d, _OWN):
                if ":" in k:
                    continue
                child = children.get(k)
                if child is None:
                    child = children[k] = self.metric.labels(name=k)
                child.set(v)

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
