"""Deterministic stand-ins for every port: fast, dependency-free, reproducible by seed."""

from kitchen.adapters.noop.stores import (
    NoopBlobStore,
    NoopHubClient,
    NoopMetricsStore,
)
from kitchen.adapters.noop.training import ByteTokenizer, NoopSamplingClient, NoopTrainingClient


def byte_tokenizer(session: object = None, options: object = None) -> ByteTokenizer:
    """The noop session's tokenizer (bytes), for validate and ``data inspect``."""
    return ByteTokenizer()


__all__ = [
    "ByteTokenizer",
    "byte_tokenizer",
    "NoopBlobStore",
    "NoopHubClient",
    "NoopMetricsStore",
    "NoopSamplingClient",
    "NoopTrainingClient",
]
