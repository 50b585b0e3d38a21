"""Deterministic stand-ins for every port: fast, dependency-free, reproducible by seed."""

from kitchen.adapters.noop.stores import (
    NoopBlobStore,
    NoopHubClient,
    NoopMetricsStore,
)
from kitchen.adapters.noop.training import ByteTokenizer, NoopSamplingClient, NoopTrainingClient

__all__ = [
    "ByteTokenizer",
    "NoopBlobStore",
    "NoopHubClient",
    "NoopMetricsStore",
    "NoopSamplingClient",
    "NoopTrainingClient",
]
