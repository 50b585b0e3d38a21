"""Engine overhead: the supervised workflow on noop adapters vs a bare loop, side by side.

Both loops call the same NoopTrainingClient (forward_backward + optim_step + result) on
the same batches. The kitchen run has both sinks on (console, plain mode; JSONL files).
Overhead per step = kitchen µs/step - bare µs/step. Goal: at most 50 µs/step.

``--trackers`` adds one more kitchen run per tracker sink (jsonl + that tracker) and one
with every sink on (W&B offline, TensorBoard, MLflow on a temp sqlite store, Prometheus on
a loopback port). For each it prints the wall µs/step and the time the sinks' ``handle``
calls took on the training thread (what a sink adds to the step; the trackers' own I/O runs
on their background threads and shows up only as contention in the wall number).

    .venv/bin/python benchmarks/bench_engine.py [--steps 10000] [--trackers]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def bare_loop(datums, steps: int, batch_size: int) -> float:
    from kitchen.adapters.noop import NoopTrainingClient
    from kitchen.ports.types import AdamParams, SessionConfig
    from kitchen.train.batching import BatchPlan

    client = NoopTrainingClient()
    client.start_session(SessionConfig(base_model="noop"))
    plan = BatchPlan(len(datums), batch_size, 10**6, steps, 0)
    t0 = time.perf_counter()
    for step in range(steps):
        batch = [datums[i] for i in plan.batch(step).indices]
        fb = client.forward_backward(batch, "cross_entropy")
        opt = client.optim_step(AdamParams(learning_rate=1e-4))
        fb.result(), opt.result()
    return time.perf_counter() - t0


def kitchen_loop(steps: int, batch_size: int, run_dir: Path, sinks: list[str] | None = None) -> tuple[float, list]:
    from kitchen.runs.execute import execute
    from kitchen.runs.preflight import compose_spec

    spec, _, _, _ = compose_spec([
        "adapters=noop", f"max_steps={steps}", f"batch_size={batch_size}", "~test_dataset",
        "num_preview_samples=0", "save_every=0", "eval_every=0", f"run_dir={run_dir}", "pipeline_depth=1",
        *([f"telemetry.sinks=[{','.join(sinks)}]"] if sinks else []),
    ])
    import kitchen.runs.execute as app

    marks: dict[str, float] = {}
    original = app.build_bus

    handle_s: dict[str, float] = {}

    def build_bus(spec, run_dir, *args):
        bus = original(spec, run_dir, *args)
        for sink in bus._sinks:  # time each sink's handle() on the training thread
            name, inner = type(sink).__name__, sink.handle
            handle_s.setdefault(name, 0.0)

            def timed(event, inner=inner, name=name):
                t = time.perf_counter()
                inner(event)
                handle_s[name] += time.perf_counter() - t
            sink.handle = timed

        def mark(event):
            if event.name == "training.step":
                marks.setdefault("first", time.perf_counter())
                marks["last"] = time.perf_counter()
        bus.listen(mark)
        return bus

    app.build_bus = build_bus
    t0 = time.perf_counter()
    execute(spec)
    total = time.perf_counter() - t0
    app.build_bus = original
    # Time from the first to the last completed step covers steps-1 full iterations.
    return (marks["last"] - marks["first"]) * steps / (steps - 1), [total, handle_s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--trackers", action="store_true", help="also measure every tracker sink (issue 10)")
    args = parser.parse_args()

    from kitchen.adapters.hf_datasets import HFDatasetStore
    from kitchen.adapters.noop import ByteTokenizer
    from kitchen.config.recipes import bundled_data_dir
    from kitchen.train.datum import build_sft_data
    from kitchen.train.renderers import build_renderer

    rows = HFDatasetStore().load(str(bundled_data_dir() / "chat_sft/train.jsonl"))
    datums, _ = build_sft_data(rows, build_renderer("auto", ByteTokenizer(), "last_assistant_message", 512))

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("KITCHEN_CACHE_DIR", tmp)
        kitchen_s, (total_s, _) = kitchen_loop(args.steps, args.batch_size, Path(tmp) / "run")
        bare_s = bare_loop(datums, args.steps, args.batch_size)
        tracked = []
        if args.trackers:
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
            mlflow = f"{{mlflow: {{artifact_location: {tmp}/mlartifacts}}}}"  # not ./mlruns in the repo
            for i, sinks in enumerate([["jsonl", "wandb"], ["jsonl", "tensorboard"], ["jsonl", mlflow], ["jsonl", "prometheus"],
                                       ["console", "jsonl", "wandb", "tensorboard", mlflow, "prometheus"]]):
                s, (t, handles) = kitchen_loop(args.steps, args.batch_size, Path(tmp) / f"run{i}", sinks)
                tracked.append((sinks, s, t, handles))
    k_us = kitchen_s / args.steps * 1e6
    b_us = bare_s / args.steps * 1e6
    print()
    print(f"engine overhead benchmark: {args.steps} supervised steps on noop adapters, sinks console+jsonl")
    print(f"  bare python loop      {b_us:8.1f} µs/step")
    print(f"  kitchen workflow      {k_us:8.1f} µs/step   (whole run incl. setup: {total_s:.2f} s)")
    print(f"  orchestration overhead {k_us - b_us:7.1f} µs/step   goal <= 50 µs/step   ratio kitchen/bare {k_us / b_us:.2f}x")
    for sinks, s, t, handles in tracked:
        us = s / args.steps * 1e6
        on_step = ", ".join(f"{name} {v / args.steps * 1e6:.1f}" for name, v in handles.items())
        label = "+".join("mlflow" if s_.startswith("{mlflow") else s_ for s_ in sinks)
        print(f"  sinks {label:<45} {us:8.1f} µs/step  overhead {us - b_us:6.1f}  (run incl. tracker flush {t:.1f} s)")
        print(f"      handle() on the training thread, µs/step: {on_step}")


if __name__ == "__main__":
    main()
