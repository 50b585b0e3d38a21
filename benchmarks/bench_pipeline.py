"""Pipelining benchmark: TinkerTrainingClient against `kitchen serve` with injected latency.

Starts `kitchen serve --backend noop --latency-ms 100` (noop: the benchmark isolates
orchestration, not compute) on a free loopback port, then runs N supervised steps
(forward_backward + optim_step) unpipelined (await each step before submitting the
next) and pipelined (keep DEPTH steps in flight), and prints steps/s and the ratio.

    .venv/bin/python benchmarks/bench_pipeline.py [--steps 20] [--depth 4] [--latency-ms 100]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitchen.adapters.tinker import TinkerTrainingClient  # noqa: E402
from kitchen.ports.types import AdamParams, Datum, LoraConfig, SessionConfig  # noqa: E402
from kitchen.serve.testing import serve_subprocess  # noqa: E402


def make_batches(tokenizer, steps: int, batch_size: int = 4) -> list[list[Datum]]:
    out = []
    for s in range(steps):
        data = []
        for b in range(batch_size):
            ids = tokenizer.encode(f"step {s} example {b}: the kitchen serves tinker")
            data.append(Datum(ids[:-1], {"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)}))
        out.append(data)
    return out


def run(client: TinkerTrainingClient, batches: list[list[Datum]], depth: int) -> tuple[float, list[float]]:
    adam = AdamParams(learning_rate=1e-4)
    losses: list[float] = []
    inflight = []
    t0 = time.perf_counter()
    for data in batches:
        inflight.append((client.forward_backward(data), client.optim_step(adam)))
        if len(inflight) >= depth:
            fb, opt = inflight.pop(0)
            losses.append(fb.result().loss)
            opt.result()
    for fb, opt in inflight:
        losses.append(fb.result().loss)
        opt.result()
    return time.perf_counter() - t0, losses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--depth", type=int, default=4, help="steps in flight when pipelined (2-4)")
    p.add_argument("--latency-ms", type=float, default=100.0)
    args = p.parse_args()

    key = "tml-bench-" + secrets.token_hex(8)
    os.environ["TINKER_API_KEY"] = key
    with serve_subprocess(key, "noop", latency_ms=args.latency_ms) as srv:
        results = {}
        for label, depth in (("unpipelined", 1), (f"pipelined (depth {args.depth})", args.depth)):
            client = TinkerTrainingClient(base_url=srv.base_url)
            client.start_session(SessionConfig(base_model="noop", lora=LoraConfig(rank=8), seed=0))
            batches = make_batches(client.get_tokenizer(), args.steps)
            run(client, batches[:2], depth)  # warm up connections
            client.close()
            client = TinkerTrainingClient(base_url=srv.base_url)
            client.start_session(SessionConfig(base_model="noop", lora=LoraConfig(rank=8), seed=0))
            elapsed, losses = run(client, batches, depth)
            client.close()
            results[label] = (args.steps / elapsed, losses)
            print(f"{label:>24}: {args.steps} steps in {elapsed:6.2f}s = {args.steps / elapsed:6.2f} steps/s")
        (u_rate, u_losses), (p_rate, p_losses) = results.values()
        same = all(abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in zip(u_losses, p_losses))
        print(f"{'speedup':>24}: {p_rate / u_rate:.2f}x (goal >= 1.8x) at {args.latency_ms:g} ms latency per call;"
              f" identical losses: {same}")
        print()
        print(f"kitchen supervised workflow (kitchen run adapters=tinker), {args.steps} steps, same server:")
        rates = {}
        for depth in (0, args.depth):
            rate, losses = run_workflow(srv.base_url, args.steps, depth)
            rates[depth] = (rate, losses)
            print(f"{f'pipeline_depth={depth}':>24}: {rate:6.2f} steps/s")
        (r0, l0), (r1, l1) = rates[0], rates[args.depth]
        print(f"{'speedup':>24}: {r1 / r0:.2f}x (goal >= 1.8x); identical losses: {l0 == l1}")
    print()
    per_call_overhead(args.steps)
    return 0


def per_call_overhead(steps: int) -> None:
    """HTTP + server overhead per SDK call on loopback: no injected latency, noop compute,
    unpipelined, so every step is 2 calls plus their result polls, end to end."""
    key = os.environ["TINKER_API_KEY"]
    with serve_subprocess(key, "noop", latency_ms=0.0) as srv:
        client = TinkerTrainingClient(base_url=srv.base_url)
        client.start_session(SessionConfig(base_model="noop", lora=LoraConfig(rank=8), seed=0))
        batches = make_batches(client.get_tokenizer(), steps + 3)
        run(client, batches[:3], 1)  # warm up
        elapsed, _ = run(client, batches[3:], 1)
        client.close()
    per_call_ms = elapsed / (2 * steps) * 1000
    print(f"per-call overhead (latency 0, noop, unpipelined): {per_call_ms:.2f} ms per call (goal <= 10 ms)")


def run_workflow(base_url: str, steps: int, depth: int) -> tuple[float, list[float]]:
    """One `kitchen run` through the real CLI; steps/s from its metrics.jsonl."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "kitchen.cli", "run", "recipe=sl_basic", "adapters=tinker", "model=noop",
               f"max_steps={steps}", "~test_dataset", "num_preview_samples=0", "save_every=0", "telemetry=jsonl",
               f"pipeline_depth={depth}", f"run_dir={tmp}/run"]
        env = {**os.environ, "TINKER_BASE_URL": base_url}
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        rows = [json.loads(line) for line in open(f"{tmp}/run/metrics.jsonl") if line.strip()]
    rows = [r for r in rows if r.get("split") is None]
    first, last = rows[0], rows[-1]
    # elapsed_s counts from the first submission; use steps 1..N like the client-level loop
    return len(rows) / last["elapsed_s"], [r["loss"] for r in rows]


if __name__ == "__main__":
    sys.exit(main())
