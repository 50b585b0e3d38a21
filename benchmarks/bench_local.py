"""Benchmark the local backend against a hand-written PyTorch + PEFT loop.

    .venv/bin/python benchmarks/bench_local.py [--model smollm2-135m-instruct] [--steps 10]

One process, one model, one batch, one seed:

1. model load time: first load into an empty temporary cache (GGUF conversion) and the
   cached reload;
2. the machine's fp32 (and bf16) matmul peak, from a timed large matmul;
3. (a) a plain loop: tokenised batch -> model(...) -> weighted CE sum -> backward ->
   AdamW step, and (b) ``LocalTrainingClient.forward_backward`` + ``optim_step`` on the
   same data; tokens/s of each and the ratio kitchen/plain (goal >= 0.95);
4. MFU. FLOPs per trained token = ``k * N`` with N = parameters that take part in the
   matmuls (the tied embedding counted once, as the lm_head matmul): ``k = 6`` for full
   fine-tuning (2N forward + 4N backward) and ``k = 4`` for LoRA (2N forward + 2N for
   the activation gradients; the LoRA weight gradients are negligible). Attention-score
   FLOPs are ignored (~3% at seq len 128). MFU = achieved FLOP/s / measured fp32 peak;
   the 6N figure is printed too for comparison with the usual convention;
5. CPU fp32 vs bf16 autocast: tokens/s, loss after the same steps, and which one
   reaches the same loss sooner.

The loops run round-robin (one step of each per round) so that noise on a shared
machine hits them alike; tokens/s use the median step time (total-time figures too).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CORPUS = """\
The kitchen was quiet before dawn. Flour dusted the long oak table, and the ovens ticked as they warmed.
A recipe is a promise: follow these steps, in this order, and you will get what you expect. Training a
language model is not so different. You gather ingredients, you measure them carefully, you control the
heat, and you taste as you go. Too much heat and the sauce breaks; too high a learning rate and the loss
explodes. The best cooks keep notes: what they changed, what happened, what they would try next time.
Reproducibility matters in both crafts. If a dish cannot be made twice, it is an accident, not a recipe.
So the baker weighs the flour instead of scooping it, and the engineer fixes the seed, records the
config, and saves a checkpoint before every risky change. Bread rises in its own time. Gradients flow
backward through every layer, nudging each weight a little toward the answer. After enough small
corrections, the loaf holds its shape and the model holds its tune.
"""


def log(msg: str) -> None:
    print(msg, flush=True)


def make_batch(tok, batch: int, seq_len: int):
    ids = tok.encode(CORPUS * 8, add_special_tokens=False)
    need = batch * (seq_len + 1)
    while len(ids) < need:
        ids = ids + ids
    rows = [ids[i * (seq_len + 1) : (i + 1) * (seq_len + 1)] for i in range(batch)]
    return rows


def matmul_peak(dtype_name: str, n: int = 2048, seconds: float = 3.0) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


class PlainLoop:
    """The baseline: what one would write by hand with transformers + peft."""

    def __init__(self, model_name, rows, *, rank, lr, seed, cache_dir=None):
        import peft
        import torch

        from kitchen.adapters.local.models import load_model
        from kitchen.train.seeding import seed_everything

        seed_everything(seed, torch=True)
        model, _, _ = load_model(model_name, cache_dir=cache_dir)
        torch.manual_seed(seed)
        cfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                              task_type="CAUSAL_LM")
        self.model = peft.get_peft_model(model, cfg)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
        self.ids = torch.tensor([r[:-1] for r in rows])
        self.tgt = torch.tensor([r[1:] for r in rows])
        self.w = torch.ones(self.tgt.shape, dtype=torch.float32)
        self.n_params = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())

    def step(self) -> float:
        import torch.nn.functional as F

        logits = self.model(input_ids=self.ids, use_cache=False).logits
        B, T, V = logits.shape
        nll = F.cross_entropy(logits.reshape(B * T, V), self.tgt.reshape(-1), reduction="none").reshape(B, T)
        loss = (nll * self.w).sum()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item() / self.w.sum().item()


class KitchenLoop:
    def __init__(self, model_name, rows, *, rank, lr, seed, cache_dir=None, bf16=False):
        from kitchen.adapters.local import LocalTrainingClient
        from kitchen.ports.types import AdamParams, Datum, LoraConfig, SessionConfig

        self.c = LocalTrainingClient(cache_dir=cache_dir, cpu_bf16_autocast=bf16)
        self.facts = self.c.start_session(SessionConfig(base_model=model_name, lora=LoraConfig(rank=rank), seed=seed))
        self.data = [Datum(r[:-1], {"target_tokens": r[1:], "weights": [1.0] * (len(r) - 1)}) for r in rows]
        self.adam = AdamParams(learning_rate=lr, beta1=0.9, beta2=0.95, eps=1e-12)

    def step(self) -> float:
        res = self.c.forward_backward(self.data).result()
        self.c.optim_step(self.adam).result()
        return res.loss


def run_interleaved(loops: dict, steps: int, warmup: int) -> dict:
    """Round-robin one step of each loop, so machine noise hits them all alike."""
    times = {k: [] for k in loops}
    losses = {k: [] for k in loops}
    for i in range(warmup + steps):
        for k, loop in loops.items():
            t0 = time.perf_counter()
            losses[k].append(loop.step())
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {"times": times, "losses": losses}


def time_to_loss(step_times, losses_after, target):
    """Seconds of timed steps until the loss (measured at each step) first reaches ``target``."""
    acc = 0.0
    for t, loss in zip(step_times, losses_after):
        acc += t
        if loss <= target:
            return acc
    return float("inf")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per loop")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-load", action="store_true", help="skip the first-load (conversion) timing")
    ap.add_argument("--skip-bf16", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from kitchen.adapters.local.models import load_model
    from kitchen.adapters.local.threads import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    log(f"torch {torch.__version__}, {threads} threads, model {args.model}, batch {args.batch} x seq {args.seq_len}, "
        f"LoRA r{args.rank}, {args.warmup} warmup + {args.steps} timed steps")

    # 1. load times
    if not args.skip_load:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            m, tok, _ = load_model(args.model, cache_dir=tmp)
            first = time.perf_counter() - t0
            del m
            t0 = time.perf_counter()
            m, tok, _ = load_model(args.model, cache_dir=tmp)
            cached_tmp = time.perf_counter() - t0
            del m
        log(f"load: first (conversion into an empty cache) {first:.1f} s, cached reload {cached_tmp:.2f} s")
    t0 = time.perf_counter()
    m, tok, _ = load_model(args.model)  # the user cache, used by the loops below
    log(f"load: user cache ({os.environ.get('KITCHEN_CACHE_DIR') or 'default'}) {time.perf_counter() - t0:.2f} s")
    del m

    # 2. matmul peak
    peak32 = matmul_peak("float32")
    peak16 = matmul_peak("bfloat16")
    log(f"matmul peak (2048^3): fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s")

    rows = make_batch(tok, args.batch, args.seq_len)
    tok_per_step = args.batch * args.seq_len
    common = dict(rank=args.rank, lr=args.lr, seed=args.seed)
    loops = {"plain": PlainLoop(args.model, rows, **common), "kitchen": KitchenLoop(args.model, rows, **common)}
    if not args.skip_bf16:
        loops["kitchen_bf16"] = KitchenLoop(args.model, rows, bf16=True, **common)
    n_params = loops["plain"].n_params
    log(f"timing {', '.join(loops)} round-robin (one step each per round; the machine is shared, so "
        "per-step medians are the robust numbers)")
    out = run_interleaved(loops, args.steps, args.warmup)
    import statistics

    tps = {}
    for k in loops:
        ts = out["times"][k]
        med = statistics.median(ts)
        tps[k] = tok_per_step / med
        ls = out["losses"][k]
        log(f"{k:>13}: {tps[k]:7.1f} tokens/s (median {med:.2f} s/step; total-time {tok_per_step * len(ts) / sum(ts):.1f} "
            f"tokens/s; min {min(ts):.2f} max {max(ts):.2f} s)  loss {ls[0]:.4f} -> {ls[-1]:.4f}")
    ratio = tps["kitchen"] / tps["plain"]
    tot = lambda k: sum(out["times"][k])  # noqa: E731
    diff = max(abs(a - b) for a, b in zip(out["losses"]["plain"], out["losses"]["kitchen"]))
    log(f"ratio kitchen/plain: {ratio:.3f} by median step time, {tot('plain') / tot('kitchen'):.3f} by total time "
        f"(goal >= 0.95); max |loss diff| plain vs kitchen {diff:.2e}")

    k = 4 if args.rank > 0 else 6
    for name in ("plain", "kitchen"):
        log(f"MFU {name}: {k}*N*tokens/s / fp32 peak = {k * n_params * tps[name] / peak32 * 100:.1f}% "
            f"(N={n_params / 1e6:.1f}M; with the 6N convention: {6 * n_params * tps[name] / peak32 * 100:.1f}%)")

    if "kitchen_bf16" in loops:
        lf, lb = out["losses"]["kitchen"], out["losses"]["kitchen_bf16"]
        # losses[i] is measured before update i; the loss *after* timed step j is losses[warmup + j + 1]
        after_f, after_b = lf[args.warmup + 1:], lb[args.warmup + 1:]
        d = abs(lb[-1] - lf[-1])
        log(f"fp32 vs bf16 autocast after {len(lf)} steps: loss {lf[-1]:.4f} vs {lb[-1]:.4f} (|diff| {d:.4f}); "
            f"tokens/s {tps['kitchen']:.1f} vs {tps['kitchen_bf16']:.1f}")
        if after_f and after_b:
            target = max(after_f[-1], after_b[-1])  # a loss both reached
            med_f = statistics.median(out["times"]["kitchen"])
            med_b = statistics.median(out["times"]["kitchen_bf16"])
            tf = time_to_loss([med_f] * len(after_f), after_f, target)
            tb = time_to_loss([med_b] * len(after_b), after_b, target)
            winner = "fp32" if tf <= tb else "bf16 autocast"
            log(f"time to reach loss {target:.4f} (median step times): fp32 {tf:.1f} s, bf16 autocast {tb:.1f} s "
                f"-> faster at equal loss: {winner}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
