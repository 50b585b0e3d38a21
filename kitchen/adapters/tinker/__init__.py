"""Tinker backend: the TrainingClient port over the official ``tinker`` SDK."""

from kitchen.adapters.tinker.client import (
    TinkerSamplingClient,
    TinkerTrainingClient,
    call_with_retries,
    is_fatal_error,
    require_api_key,
)

__all__ = ["TinkerTrainingClient", "TinkerSamplingClient", "call_with_retries", "is_fatal_error", "require_api_key"]
