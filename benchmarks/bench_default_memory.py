"""The local backend's default settings against today's, one fresh process per mode: peak RSS and tokens/s.

    .venv/bin/python benchmarks/bench_default_memory.py   # SmolLM2-135M LoRA r16, 16 x 512 and 8 x 256
    .venv/bin/python benchmarks/bench_default_memory.py --shapes 16x512 --modes default,auto-fp32

Each mode runs in its own process (as one ``kitchen run`` would): load the model, one
warm-up step, then ``--steps`` timed steps; memory is the process's whole peak resident
set (``VmHWM``, model and optimizer included), the number issue 21 reported per run.
Modes: ``one-pass`` (micro-batching off, full logits: the settings before issue 21; about
23 GB at 16 x 512, so it is left out unless named), ``chunks`` (micro-batching off, loss in
chunks of 256, fp32: the defaults before this change), ``auto-fp32`` (the auto budget in
fp32) and ``default`` (auto budget, precision=auto, fused_loss=auto). The losses of all modes
must agree within bf16 rounding (1e-2 relative); fp32 modes within 1e-4.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
VOCAB = 49152
MODES = {
    "one-pass": dict(max_tokens_per_micro_batch=None, loss_chunk_tokens=None, precision="fp32"),
    "chunks": dict(max_tokens_per_micro_batch=None, loss_chunk_tokens=256, precision="fp32"),
    "auto-fp32": dict(max_tokens_per_micro_batch="auto", precision="fp32"),
    "default": dict(),
}


def vmhwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child(mode: str, batch: int, length: int, steps: int, threads: int, model: str) -> dict:
    import random

    from kitchen.adapters.local import LocalTrainingClient
    from kitchen.ports.types import AdamParams, Datum, LoraConfig, SessionConfig

    c = LocalTrainingClient(threads=threads)
    facts = c.start_session(SessionConfig(base_model=model, lora=LoraConfig(rank=16), device="cpu", max_length=length,
                                          **MODES[mode]))
    rng = random.Random(f"{batch}:{length}")
    vocab = int(c.train_session().vocab_size)
    data = []
    for _ in range(batch):
        ids = [rng.randrange(3, vocab) for _ in range(length + 1)]
        data.append(Datum(model_input=ids[:-1], loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * length}))
    times, loss = [], None
    for i in range(steps + 1):
        t0 = time.perf_counter()
        r = c.forward_backward(data).result()
        c.optim_step(AdamParams(learning_rate=1e-5)).result()
        if i:
            times.append(time.perf_counter() - t0)
        loss = loss if loss is not None else r.loss
    times.sort()
    med = times[len(times) // 2]
    return dict(mode=mode, batch=batch, length=length, step_s=med, tok_s=batch * length / med, peak_gb=vmhwm() / 1e9,
                first_loss=loss, precision=facts.get("precision"), budget=facts.get("max_tokens_per_micro_batch"),
                budget_note=facts.get("micro_batch_budget"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="8x256,16x512")
    ap.add_argument("--modes", default="chunks,auto-fp32,default")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, b, length = a.child.split(":")
        print("RESULT " + json.dumps(child(mode, int(b), int(length), a.steps, a.threads, a.model)), flush=True)
        return
    rows = []
    for shape in a.shapes.split(","):
        b, length = (int(x) for x in shape.split("x"))
        for mode in a.modes.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", f"{mode}:{b}:{length}", "--steps", str(a.steps),
                                   "--threads", str(a.threads), "--model", a.model], capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{mode} {shape} failed:\n{proc.stderr[-2000:]}", flush=True)
                continue
            row = json.loads(line[-1][7:])
            rows.append(row)
            print(f"  {b:>2} x {length:>4}  {mode:<10} {row['tok_s']:6.0f} tok/s  peak RSS {row['peak_gb']:5.1f} GB  "
                  f"loss {row['first_loss']:.5f}  budget {row['budget']}  {row['precision']}", flush=True)
    print("\n| batch x length | mode | tokens/s | peak RSS (GB) | budget | precision |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['batch']} x {r['length']} | {r['mode']} | {r['tok_s']:.0f} | {r['peak_gb']:.1f} | {r['budget']} | {r['precision']} |")
    for shape in {(r["batch"], r["length"]) for r in rows}:
        losses = [r["first_loss"] for r in rows if (r["batch"], r["length"]) == shape]
        spread = (max(losses) - min(losses)) / max(abs(min(losses)), 1e-9)
        print(f"{shape[0]} x {shape[1]}: losses agree to {spread:.1e} (relative)")
        if spread > 1e-2:
            raise SystemExit("the modes' first losses differ by more than bf16 rounding")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
