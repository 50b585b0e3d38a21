"""Experiment-tracker sinks (W&B, TensorBoard, MLflow, Prometheus), one module per SDK.

Each is built by :func:`kitchen.telemetry.sinks.build_sinks` with ``run=`` a SinkContext;
each SDK is an optional extra and is imported only when its sink is built.
"""
