"""The loss's logits in chunks against one pass: peak step memory and tokens/s, side by side.

    make bench-loss-chunks                       # SmolLM2-135M LoRA r16 fp32, 8 x 256, chunk sizes vs one pass
    make bench-loss-chunks ARGS="--big"          # also 16 x 512 for the chunked modes (one pass there needs ~23 GB)

Each mode is a local client on the same model and the same random token batch; one
warm-up step (optimizer state) per client, then ``--steps`` steps, modes interleaved
round by round so machine load hits them alike. Memory is the peak resident set during a
step above the level just before it (``VmHWM`` after a reset, as ``bench_scale.py``).
The losses of all modes must agree to fp32 rounding; the script says so, or fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import MIB, PeakRSS, datums, log

MODEL = "smollm2-135m-instruct"
VOCAB = 49152
MODES = {"one pass": None, "chunks of 256": 256, "chunks of 1024": 1024, "chunks of 4096": 4096}


def rows(batch: int, length: int) -> list[list[int]]:
    import random

    rng = random.Random(f"{batch}:{length}")
    return [[rng.randrange(3, VOCAB) for _ in range(length + 1)] for _ in range(batch)]


def client(chunk: int | None, threads: int):
    from kitchen.adapters.local import LocalTrainingClient
    from kitchen.ports.types import LoraConfig, SessionConfig

    c = LocalTrainingClient(threads=threads)
    c.start_session(SessionConfig(base_model=MODEL, lora=LoraConfig(rank=16), device="cpu", dtype="float32",
                                  loss_chunk_tokens=chunk))
    return c


def step(c, data) -> tuple[float, int, float]:
    import time

    from kitchen.ports.types import AdamParams

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        r = c.forward_backward(data).result()
        c.optim_step(AdamParams(learning_rate=1e-5)).result()
        seconds = time.perf_counter() - t0
    return seconds, mem.peak, r.loss


def run(batch: int, length: int, modes: dict[str, int | None], steps: int, threads: int) -> list[dict]:
    data = datums(rows(batch, length))
    clients = {name: client(chunk, threads) for name, chunk in modes.items()}
    for c in clients.values():  # warm-up: the optimizer state exists before memory is measured
        step(c, data)
    seen: dict[str, list[tuple[float, int, float]]] = {name: [] for name in modes}
    for _ in range(steps):
        for name, c in clients.items():
            seen[name].append(step(c, data))
    out = []
    for name, results in seen.items():
        med = statistics.median(s for s, _, _ in results)
        peak = max(p for _, p, _ in results)
        out.append(dict(batch=batch, length=length, mode=name, step_s=med, tok_s=batch * length / med,
                        peak_mib=peak / MIB, loss=results[-1][2]))
        log(f"  {batch:>2} x {length:>4}  {name:<15} {med:6.2f} s/step {batch * length / med:7.0f} tok/s  "
            f"peak +{peak / MIB:6.0f} MiB  loss {results[-1][2]:.5f}")
    for c in clients.values():
        c.close()
    losses = [r["loss"] for r in out]
    spread = (max(losses) - min(losses)) / max(abs(min(losses)), 1e-9)
    if spread > 1e-4:
        raise SystemExit(f"the modes' losses differ by {spread:.2e} (relative): chunking changed the numbers")
    log(f"  losses agree across modes (relative spread {spread:.1e})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--big", action="store_true", help="also 16 x 512, chunked modes only")
    a = ap.parse_args()
    table = run(8, 256, MODES, a.steps, a.threads)
    if a.big:
        table += run(16, 512, {k: v for k, v in MODES.items() if v}, a.steps, a.threads)
    base = {(r["batch"], r["length"]): r for r in table if r["mode"] == "one pass"}
    log("\n| batch x length | mode | s/step | tokens/s | peak step memory (MiB) | memory vs one pass |")
    log("|---|---|---:|---:|---:|---:|")
    for r in table:
        ref = base.get((r["batch"], r["length"]))
        ratio = f"{r['peak_mib'] / ref['peak_mib']:.2f}x" if ref else "-"
        log(f"| {r['batch']} x {r['length']} | {r['mode']} | {r['step_s']:.2f} | {r['tok_s']:.0f} | {r['peak_mib']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
