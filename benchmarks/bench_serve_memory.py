"""Server memory under an RL-style loop: `kitchen serve` RSS over N steps that snapshot every step.

tinker-cookbook's RL loop calls ``save_weights_and_get_sampling_client`` every step and
samples from the snapshot. This starts `kitchen serve --backend local` on a free
loopback port, runs STEPS x (forward_backward, optim_step, snapshot, sample 4 tokens)
with the real tinker SDK, and prints the server's RSS (VmRSS) as it goes, the growth
after warm-up and in total. Goal: flat after warm-up, total growth < 1 GiB.

    .venv/bin/python benchmarks/bench_serve_memory.py [--steps 200] [--model HuggingFaceTB/SmolLM2-135M-Instruct]

``--server-pythonpath DIR`` runs the server from another checkout (e.g. an older
commit) with the same client, for before/after numbers.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kitchen.serve.testing import serve_subprocess


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--every", type=int, default=20, help="print RSS every this many steps")
    p.add_argument("--warmup", type=int, default=20, help="steps before the flatness window starts")
    p.add_argument("--server-pythonpath", default=None, help="run the server from this checkout instead")
    args = p.parse_args()

    key = "tml-bench-" + secrets.token_hex(8)
    os.environ["TINKER_API_KEY"] = key
    if args.server_pythonpath:
        os.environ["PYTHONPATH"] = args.server_pythonpath
    import tinker
    from tinker import types

    with serve_subprocess(key, "local", startup_timeout_s=300) as srv:
        os.environ.pop("PYTHONPATH", None)
        pid = srv.process.pid
        service = tinker.ServiceClient(base_url=srv.base_url)
        tc = service.create_lora_training_client(base_model=args.model, rank=args.rank, seed=0).result()
        tok = tc.get_tokenizer()
        ids = tok.encode("Question: what is 12 + 30? Answer: 42. The kitchen serves tinker, one step at a time.")
        datum = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                            loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)})
        prompt = types.ModelInput.from_ints(ids[:12])
        sp = types.SamplingParams(max_tokens=4, temperature=1.0, seed=0)
        start = rss_mib(pid)
        print(f"server RSS after create_model: {start:8.1f} MiB (model {args.model}, LoRA rank {args.rank})", flush=True)
        warm = None
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            tc.forward_backward([datum], "cross_entropy").result()
            tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
            sampler = tc.save_weights_and_get_sampling_client().result()
            sampler.sample(prompt, 1, sp).result()
            if step == args.warmup:
                warm = rss_mib(pid)
            if step % args.every == 0 or step == args.steps:
                print(f"step {step:4d}: server RSS {rss_mib(pid):8.1f} MiB  ({(time.perf_counter() - t0) / step:.2f} s/step)", flush=True)
        end = rss_mib(pid)
        service.close("success").result()
    print(f"total growth:               {end - start:8.1f} MiB over {args.steps} steps (goal < 1024 MiB)")
    if warm is not None:
        print(f"growth after warm-up ({args.warmup}): {end - warm:8.1f} MiB ({(end - warm) / max(1, args.steps - args.warmup):.2f} MiB/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
