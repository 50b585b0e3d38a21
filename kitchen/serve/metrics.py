"""Prometheus metrics of ``kitchen serve`` (``GET /metrics``), on prometheus_client.

A private registry per server (not the library's global one), so tests that start
several servers in one process do not collide. Request counts and latencies are per
endpoint (the last path segment, a bounded set) and status; the gauges read the live
server state when scraped; ``process_resident_memory_bytes`` and friends come from
prometheus_client's own process collector.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


class ServeMetrics:
    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("kitchen_serve_requests", "HTTP requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("kitchen_serve_request_seconds", "Time to answer an HTTP request (not the queued work).",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        for name, (doc, fn) in (gauges or {}).items():
            Gauge(name, doc, registry=self.registry).set_function(fn)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def state_gauges(state: Any) -> dict[str, tuple[str, Callable[[], float]]]:
    return {
        "kitchen_serve_sessions": ("Client sessions opened since start.", lambda: float(len(state.sessions))),
        "kitchen_serve_models": ("Training models (sessions' training clients) in memory.", lambda: float(len(state.models))),
        "kitchen_serve_loaded_samplers": ("Sampler weight sets loaded in memory (bounded by --max-loaded-samplers).",
                                          lambda: float(state.snapshots.loaded_count())),
        "kitchen_serve_pending_futures": ("Futures not yet finished.", lambda: float(state.pending_futures())),
        "kitchen_serve_retained_results": ("Finished results held for retrieve_future (dropped 120 s after retrieval, "
                                           "or after --result-ttl-s).", lambda: float(state.futures.retained()[0])),
        "kitchen_serve_retained_result_bytes": ("Bytes of the finished results held for retrieve_future.",
                                                lambda: float(state.futures.retained()[1])),
        "kitchen_serve_sample_tokens_in_flight": ("num_samples x (prompt + max_tokens) over queued and running samples "
                                                  "(bounded by --max-sample-tokens-in-flight).",
                                                  lambda: float(state.sample_budget.used)),
        "kitchen_serve_weight_bytes": ("Bytes of model weights in memory (training models and samplers); a base model "
                                       "shared by LoRA sessions counts once.", lambda: float(state.weight_bytes())),
    }
