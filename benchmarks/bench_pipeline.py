"""Pipelining benchmark: TinkerTrainingClient against `kitchen serve` with injected latency.

Starts `kitchen serve --backend noop --latency-ms 100` (noop: the benchmark isolates
orchestration, not compute) on a free loopback port, then runs N supervised steps
(forward_backward + optim_step) unpipelined (await each step before submitting the
next) and pipelined (keep DEPTH steps in flight), and prints steps/s and the ratio.

    .venv/bin/python benchmarks/bench_pipeline.py [--steps 20] [--depth 4] [--latency-ms 100] [--overhead-only]

It ends with the per-call overhead through the real tinker SDK on loopback (median and
p90, unpipelined and pipelined; ``--overhead-only`` runs just that).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitchen.adapters.tinker import TinkerTrainingClient
from kitchen.ports.types import AdamParams, Datum, LoraConfig, SessionConfig
from kitchen.serve.testing import serve_subprocess


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
    p.add_argument("--overhead-only", action="store_true", help="only the per-call overhead measurement")
    args = p.parse_args()

    if args.overhead_only:
        os.environ.setdefault("TINKER_API_KEY", "tml-bench-" + secrets.token_hex(8))
        per_call_overhead(max(args.steps, 30))
        return 0

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
    per_call_overhead(max(args.steps, 30))
    return 0


def _quantiles(values: list[float]) -> tuple[float, float]:
    """(median, p90) in milliseconds of per-call seconds."""
    import statistics

    ms = sorted(v * 1000 for v in values)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_call_overhead(steps: int, depth: int = 8) -> None:
    """HTTP + server overhead per call through the real tinker SDK on loopback.

    ``kitchen serve --backend noop`` with no injected latency, so a call's time is the
    SDK, the HTTP round trips (the POST and its ``retrieve_future`` long poll) and the
    server's own work. A trivial forward_backward (one 16-token datum) and a 1-token
    sample, each timed unpipelined (one call at a time: its own latency) and pipelined
    (``depth`` calls in flight: batch time / depth, i.e. the cost per call when the
    client keeps the server busy). The two call kinds alternate round by round so that
    load from other processes hits both alike. CPU time per call (client process, server
    process) is printed too: unlike wall time it barely moves with the machine's load.
    """
    import tinker
    from tinker import types

    key = os.environ["TINKER_API_KEY"]
    datum = types.Datum(model_input=types.ModelInput.from_ints(list(range(1, 17))),
                        loss_fn_inputs={"target_tokens": list(range(2, 18)), "weights": [1.0] * 16})
    prompt = types.ModelInput.from_ints([1, 2, 3, 4])
    params = types.SamplingParams(max_tokens=1, temperature=1.0)
    with serve_subprocess(key, "noop", latency_ms=0.0) as srv:
        service = tinker.ServiceClient(base_url=srv.base_url)
        training = service.create_lora_training_client(base_model="noop", rank=8).result()
        sampler = service.create_sampling_client(base_model="noop").result()
        calls = {"forward_backward": lambda: training.forward_backward([datum], "cross_entropy"),
                 "sample": lambda: sampler.sample(prompt, 1, params)}
        times: dict[tuple[str, str], list[float]] = {(k, m): [] for k in calls for m in ("unpipelined", "pipelined")}
        cpu: dict[tuple[str, str], list[float]] = {k: [0.0, 0.0, 0] for k in times}  # client s, server s, calls
        pid = srv.process.pid
        for call in calls.values():  # warm up connections and code paths
            [f.result() for f in [call() for _ in range(depth)]]
        for _ in range(steps):
            for name, call in calls.items():
                for mode, n in (("unpipelined", 1), ("pipelined", depth)):
                    c0, s0, t0 = time.process_time(), _cpu_s(pid), time.perf_counter()
                    [f.result() for f in [call() for _ in range(n)]]
                    times[(name, mode)].append((time.perf_counter() - t0) / n)
                    acc = cpu[(name, mode)]
                    acc[0] += time.process_time() - c0
                    acc[1] += _cpu_s(pid) - s0
                    acc[2] += n
        service.close("success").result()
    load = os.getloadavg()
    print(f"per-call overhead, tinker SDK -> kitchen serve --backend noop on loopback, latency 0, {steps} rounds "
          f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}); goal <= 10 ms per call:")
    for (name, mode), values in times.items():
        label = f"{name}, {mode}" + (f" (depth {depth})" if mode == "pipelined" else "")
        med, p90 = _quantiles(values)
        client_s, server_s, n = cpu[(name, mode)]
        print(f"{label:>36}: median {med:6.2f} ms   p90 {p90:6.2f} ms   CPU per call: client {client_s / n * 1000:5.2f} ms, "
              f"server {server_s / n * 1000:5.2f} ms")


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
    last = rows[-1]
    # elapsed_s counts from the first submission; use steps 1..N like the client-level loop
    return len(rows) / last["elapsed_s"], [r["loss"] for r in rows]


if __name__ == "__main__":
    sys.exit(main())
