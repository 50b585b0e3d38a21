"""Memory and time per step of the local backend at scale; TRL's SFTTrainer side by side.

    make bench-scale                         # the default, short run: 3 workloads x 4 modes, 2 TRL rounds
    make bench-scale ARGS=--full             # the whole grid below, more steps and rounds (~16 min on 2 busy cores)

1. **Grid.** A Llama-shaped model built from a config dict with random weights (speed and
   memory do not depend on the weights): vocabulary 8192, tied embeddings, hidden 128,
   2 layers: small, so that the default grid runs in minutes on two shared cores; the
   real models' numbers come from the extrapolation (3). Random token streams long
   enough to fill every length. With ``--full``, for batch
   size in {4, 8, 16, 32} at length 256 and length in {512, 1024, 2048} at batch 4 (by
   default only batch {4, 16} at 256 and 4 x 1024), with
   LoRA r16 in fp32: time per step and peak memory, for the single pass, a token budget
   per micro-batch (``max_tokens_per_micro_batch`` = 1024, or the row length when that
   is longer), activation checkpointing, and both. One client per mode takes every
   workload in turn, with one warm-up step when it is created (a length above 1024 gets
   four new ones, as the budget is a session setting), so the four clients of a row have
   seen the same batches and their losses differ only by float rounding.
2. **Memory** is the peak resident set of this process during one step, above the
   resident set just before it (model, optimizer state and allocator caches included in
   the baseline): ``VmHWM`` from /proc/self/status after resetting it by writing 5 to
   /proc/self/clear_refs, with ``gc.collect()`` and glibc's ``malloc_trim`` in between.
3. **Extrapolation to 24 GiB.** Activation bytes saved for backward per token and layer,
   counted exactly with ``torch.autograd.graph.saved_tensors_hooks`` on 1- and 2-layer
   copies of a 0.5B (Qwen2.5-0.5B) and a 1B (Llama-3.2-1B) config, with and without
   checkpointing, plus the logits per token of the vocabulary, plus the static weights,
   gradients and AdamW state. Scaled to bf16 on a GPU (activations halved), that gives
   the most tokens one micro-batch can hold in 24 GiB, and so the batch x length at which
   each model stops fitting without micro-batching.
4. **TRL.** The same model, data, LoRA and batch through ``trl.SFTTrainer`` with
   ``gradient_checkpointing=True``, against kitchen with the same checkpointing, rounds
   interleaved (kitchen first, then TRL first, ...) so that load on the machine hits both
   alike; tokens/s from the median step's wall time and from its CPU time, and peak step
   memory (what is held equal is listed in :func:`trl_vs_kitchen`). Goal: kitchen >= 1.2x
   TRL at equal or lower memory. Skipped with a note when trl is not installed (``pip install
   'crucible-kitchen[bench]'``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3
MIB = 1024**2

BENCH_CONFIG = dict(  # Llama layout, small enough that the default grid takes minutes on 2 busy cores
    vocab_size=8192, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=2, pad_token_id=2,
)
# Public configs (architecture numbers only; random weights).
QWEN25_05B = dict(arch="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096)
LLAMA32_1B = dict(arch="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, max_position_embeddings=4096)


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ memory
_LIBC = None


def _trim() -> None:
    global _LIBC
    gc.collect()
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak resident memory of this process inside the block, above the level at its start."""

    def __enter__(self) -> "PeakRSS":
        _trim()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        self.base = _status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak = _status("VmHWM") - self.base


# ------------------------------------------------------------------ model and data
def build_model_dir(root: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kitchen.adapters.local.tiny import build_tiny_tokenizer

    path = root / "bench-model"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**BENCH_CONFIG))
    model.save_pretrained(str(path))
    build_tiny_tokenizer().save_pretrained(str(path))  # only the chat template is used; data are token ids
    return path


def token_rows(batch: int, length: int, seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(f"{seed}:{batch}:{length}")
    return [[rng.randrange(3, BENCH_CONFIG["vocab_size"]) for _ in range(length + 1)] for _ in range(batch)]


def datums(rows):
    from kitchen.ports.types import Datum

    return [Datum(r[:-1], {"target_tokens": r[1:], "weights": [1.0] * (len(r) - 1)}) for r in rows]


def kitchen_client(model_dir: Path, threads: int, **scale):
    from kitchen.adapters.local import LocalTrainingClient
    from kitchen.ports.types import LoraConfig, SessionConfig

    c = LocalTrainingClient(threads=threads)
    c.start_session(SessionConfig(base_model=str(model_dir), lora=LoraConfig(rank=16), device="cpu", dtype="float32", **scale))
    return c


def kitchen_steps(client, data, steps: int, cpu_times: list[float] | None = None,
                  warmup: bool = True) -> tuple[list[float], float, float]:
    """(step seconds, peak step memory, last loss), after a warm-up step (which creates the
    optimizer state) unless the client has taken one; CPU seconds go to ``cpu_times``."""
    from kitchen.ports.types import AdamParams

    adam = AdamParams(learning_rate=1e-4)
    if warmup:
        client.forward_backward(data).result()
        client.optim_step(adam).result()
    times, peak, loss = [], 0, 0.0
    for _ in range(steps):
        with PeakRSS() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            r = client.forward_backward(data).result()
            client.optim_step(adam).result()
            times.append(time.perf_counter() - t0)
            if cpu_times is not None:
                cpu_times.append(time.process_time() - c0)
        peak = max(peak, mem.peak)
        loss = r.loss
    return times, peak, loss


# ------------------------------------------------------------------ grid
MICRO_BUDGET = 1024  # tokens per micro-batch, raised to the row length when that is longer
MODES = {
    "single pass": {},
    "micro budget": {"budget": True},
    "checkpointing": {"activation_checkpointing": True},
    "micro + ckpt": {"budget": True, "activation_checkpointing": True},
}


def grid(model_dir: Path, batches: list[int], lengths: list[int], steps: int, threads: int) -> list[dict]:
    """Every workload through one long-lived client per mode (session setup and the warm-up
    step happen once per client, not once per cell); each mode's client sees the same
    batches in the same order, so the losses of one row stay comparable across modes.
    The micro-batch budget is a session setting, so a length above it gets new clients."""
    workloads = [(b, lengths[0]) for b in batches] + [(batches[0], L) for L in lengths[1:]]
    clients: dict[tuple[str, int], object] = {}
    rows = []
    for b, L in workloads:
        data = datums(token_rows(b, L))
        for mode, opts in MODES.items():
            scale = dict(opts)
            budget = max(MICRO_BUDGET, L)  # a sequence is never split across passes
            if scale.pop("budget", False):
                scale["max_tokens_per_micro_batch"] = budget
            # every mode gets a new client when the budget changes, so a row's clients share one history
            fresh = (mode, budget) not in clients
            if fresh:
                clients[(mode, budget)] = kitchen_client(model_dir, threads, **scale)
            cpu: list[float] = []
            times, peak, loss = kitchen_steps(clients[(mode, budget)], data, steps, cpu, warmup=fresh)
            med, med_cpu = statistics.median(times), statistics.median(cpu)
            rows.append(dict(batch=b, length=L, mode=mode, step_s=med, cpu_s=med_cpu, tok_s=b * L / med,
                             peak_mib=peak / MIB, loss=loss))
            log(f"  batch {b:>2} x len {L:>4}  {mode:<15} {med:7.2f} s/step ({med_cpu:6.2f} CPU s) {b * L / med:8.0f} tok/s  "
                f"peak +{peak / MIB:7.0f} MiB  loss {loss:.4f}")
    for client in clients.values():
        client.close()
    clients.clear()
    _trim()
    return rows


def print_grid(rows: list[dict]) -> None:
    log("\n| batch | length | mode | s/step | CPU s/step | tokens/s | peak step memory (MiB) | loss |")
    log("|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        log(f"| {r['batch']} | {r['length']} | {r['mode']} | {r['step_s']:.2f} | {r['cpu_s']:.2f} | {r['tok_s']:.0f} | "
            f"{r['peak_mib']:.0f} | {r['loss']:.4f} |")


# ------------------------------------------------------------------ extrapolation
def saved_bytes_per_token_layer(cfg: dict, checkpointing: bool, tokens: int = 256) -> float:
    """Bytes autograd saves per token per decoder layer (fp32), from 2-layer minus 1-layer models."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = []
    for layers in (1, 2):
        c = {k: v for k, v in cfg.items() if k != "arch"}
        c.update(num_hidden_layers=layers, vocab_size=512)  # layers do not depend on the vocabulary
        conf = AutoConfig.for_model(cfg["arch"], **c)
        with torch.random.fork_rng(devices=[]):
            model = AutoModelForCausalLM.from_config(conf)
        model.config.use_cache = False
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        total = 0
        weights = {q.untyped_storage().data_ptr() for q in model.parameters()}

        def pack(t, weights=weights):
            nonlocal total
            # autograd also saves the weights of every matmul: they are parameters, not activations
            if t.untyped_storage().data_ptr() not in weights:
                total += t.numel() * t.element_size()
            return t

        ids = torch.randint(0, 512, (1, tokens))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids).logits.sum().backward()
        out.append(total)
        del model
    return (out[1] - out[0]) / tokens


def param_count(cfg: dict) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    c = {k: v for k, v in cfg.items() if k != "arch"}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg["arch"], **c))
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def extrapolate() -> list[dict]:
    rows = []
    for name, cfg in (("0.5B (Qwen2.5-0.5B config)", QWEN25_05B), ("1B (Llama-3.2-1B config)", LLAMA32_1B)):
        n = param_count(cfg)
        per_layer = {ck: saved_bytes_per_token_layer(cfg, ck) for ck in (False, True)}
        for mode in ("LoRA", "full"):
            # bf16 weights on the GPU; full fine-tuning keeps fp32 master weights, grads and AdamW (16 B/param)
            static = n * 2 if mode == "LoRA" else n * 16
            for ck in (False, True):
                act = per_layer[ck] / 2 * cfg["num_hidden_layers"]  # bf16 activations: half the fp32 bytes
                logits = cfg["vocab_size"] * (2 + 4 + 4)  # bf16 logits, their fp32 copy, its gradient
                per_token = act + logits
                free = 24 * GIB - static - 1 * GIB  # 1 GiB for the CUDA context and allocator slack
                max_tokens = int(free / per_token) if free > 0 else 0
                rows.append(dict(model=name, params=n, mode=mode, ckpt=ck, static_gib=static / GIB,
                                 kib_per_token=per_token / 1024, max_tokens=max_tokens))
    return rows


def print_extrapolation(rows: list[dict]) -> None:
    log("\n| model | params | training | checkpointing | static GiB | KiB/token | tokens per micro-batch in 24 GiB | fits batch x 2048 |")
    log("|---|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        fits = r["max_tokens"] // 2048
        log(f"| {r['model']} | {r['params'] / 1e9:.2f}B | {r['mode']} | {'on' if r['ckpt'] else 'off'} | {r['static_gib']:.1f} | "
            f"{r['kib_per_token']:.0f} | {r['max_tokens']:,} | {fits} |")


# ------------------------------------------------------------------ TRL side by side
def trl_vs_kitchen(model_dir: Path, batch: int, length: int, steps: int, rounds: int, threads: int) -> dict | None:
    """Kitchen and TRL's SFTTrainer on one workload, checkpointing on both, rounds interleaved.

    Fair by construction: the same model files, the same random token rows (TRL gets each
    row's first ``length`` tokens, so it predicts ``length - 1`` of them and kitchen
    ``length``: 0.4% more work for kitchen at 256), fp32 on both, LoRA r16 alpha 32 on every
    linear layer of the body (kitchen's ``all-linear`` and PEFT's are the same seven per
    layer; the tied unembedding is frozen on both), non-reentrant checkpointing of every
    decoder layer on both, no packing or padding-free on either (the rows have no padding),
    the same torch thread count, one process. A step is forward, backward and the AdamW
    step; TRL's is timed from ``on_step_begin`` to ``on_step_end`` (its data loading falls
    outside, in its favour). Each step records wall seconds and this process's CPU seconds
    (``time.process_time``): on a machine shared with other jobs the wall time mostly
    measures waiting for a core, while CPU seconds measure the work each loop does.

    One thread by default, on both sides: with two threads on two cores shared with other
    jobs, every parallel op waits at its closing barrier for whichever thread was
    descheduled, and that waiting (spinning, so it counts as CPU time too) swamps the
    work. Measured on 2 cores at load average ~10, batch 8 x 256: kitchen 0.64 CPU s per
    step with 1 thread and 4.2 with 2; TRL 1.47 and 4.6. ``--trl-threads 2`` on a quiet
    machine compares the loops at full width.
    """
    try:
        import trl  # noqa: F401
    except ImportError:
        log("\nTRL: not installed (pip install 'crucible-kitchen[bench]'); the side-by-side is skipped.")
        return None
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(threads)
    rows = token_rows(batch * (steps + 1), length, seed=7)
    data = datums(rows)
    results = {name: {"times": [], "cpu": [], "peak": 0} for name in ("kitchen", "trl")}

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.peak, self.mem, self.t0, self.c0, self.n = [], [], 0, None, 0.0, 0.0, 0

        def on_step_begin(self, args, state, control, **kw):
            self.n += 1
            if self.n > 1:  # the first step warms up
                self.mem = PeakRSS().__enter__()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            dt, dc = time.perf_counter() - self.t0, time.process_time() - self.c0
            if self.mem is not None:
                self.mem.__exit__()
                self.peak = max(self.peak, self.mem.peak)
                self.times.append(dt)
                self.cpu.append(dc)
                self.mem = None

    def run_kitchen() -> tuple[list[float], list[float], float]:
        cpu: list[float] = []
        client = kitchen_client(model_dir, threads, activation_checkpointing=True)
        times, peak, _ = kitchen_steps(client, data[:batch], steps, cpu)
        client.close()
        del client
        _trim()
        return times, cpu, peak

    def run_trl() -> tuple[list[float], list[float], float]:
        ds = Dataset.from_list([{"input_ids": row[:length], "completion_mask": [1] * length} for row in rows])
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        timer = Timer()
        with tempfile.TemporaryDirectory() as out:
            cfg = SFTConfig(output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                            max_steps=steps + 1, learning_rate=1e-4, gradient_checkpointing=True,
                            gradient_checkpointing_kwargs={"use_reentrant": False}, max_length=length,
                            packing=False, padding_free=False, report_to=[], save_strategy="no", logging_strategy="no",
                            use_cpu=True, dataloader_num_workers=0, bf16=False, fp16=False, seed=0, disable_tqdm=True,
                            shuffle_dataset=False)
            trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                                 peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
                                 callbacks=[timer])
            trainer.train()
        del trainer, model
        _trim()
        return timer.times, timer.cpu, timer.peak

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    loads = []
    for r in range(rounds):
        order = (("kitchen", run_kitchen), ("trl", run_trl)) if r % 2 == 0 else (("trl", run_trl), ("kitchen", run_kitchen))
        line = []
        for name, fn in order:  # alternate who goes first, so a load spike hits both alike
            times, cpu, peak = fn()
            res = results[name]
            res["times"] += times
            res["cpu"] += cpu
            res["peak"] = max(res["peak"], peak)
            line.append(f"{name} {statistics.median(times):.2f} s/step ({statistics.median(cpu):.2f} CPU s)")
        loads.append(os.getloadavg()[0])
        log(f"  round {r + 1}: {', '.join(line)}; load average {loads[-1]:.1f}")
    tokens = batch * length
    k, t = results["kitchen"], results["trl"]
    out = dict(batch=batch, length=length, threads=threads,
               kitchen_tps=tokens / statistics.median(k["times"]), trl_tps=tokens / statistics.median(t["times"]),
               kitchen_cpu_tps=tokens / statistics.median(k["cpu"]), trl_cpu_tps=tokens / statistics.median(t["cpu"]),
               kitchen_peak=k["peak"] / MIB, trl_peak=t["peak"] / MIB)
    out["ratio"] = out["kitchen_tps"] / out["trl_tps"]
    out["cpu_ratio"] = out["kitchen_cpu_tps"] / out["trl_cpu_tps"]
    log(f"\nTRL SFTTrainer vs kitchen, LoRA r16 fp32, batch {batch} x {length}, {threads} thread(s), non-reentrant "
        f"checkpointing of every decoder layer on both, {rounds} interleaved rounds x {steps} steps, "
        f"load average {min(loads):.1f}-{max(loads):.1f}:")
    log("| loop | tokens/s (median wall step) | tokens per CPU second (median step) | peak step memory (MiB) |")
    log("|---|---:|---:|---:|")
    log(f"| kitchen | {out['kitchen_tps']:.0f} | {out['kitchen_cpu_tps']:.0f} | {out['kitchen_peak']:.0f} |")
    log(f"| TRL SFTTrainer | {out['trl_tps']:.0f} | {out['trl_cpu_tps']:.0f} | {out['trl_peak']:.0f} |")
    log(f"kitchen / TRL: {out['ratio']:.2f}x wall tokens/s, {out['cpu_ratio']:.2f}x tokens per CPU second (goal >= 1.2x), "
        f"memory kitchen / TRL = {out['kitchen_peak'] / max(out['trl_peak'], 1):.2f}")
    return out


# The default run is a quick look (minutes); --full is the issue's whole grid.
QUICK = dict(batches="4,16", lengths="256,1024", steps=1, trl_rounds=2, trl_steps=2)
FULL = dict(batches="4,8,16,32", lengths="256,512,1024,2048", steps=2, trl_rounds=4, trl_steps=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true",
                    help=f"the whole grid (batches {FULL['batches']}, lengths {FULL['lengths']}), "
                         f"{FULL['steps']} timed steps per cell and {FULL['trl_rounds']} TRL rounds (16 min on 2 cores at load average ~11)")
    ap.add_argument("--batches", default=None, help=f"batch sizes at the first length (default {QUICK['batches']})")
    ap.add_argument("--lengths", default=None, help=f"lengths; the longer ones at the first batch size (default {QUICK['lengths']})")
    ap.add_argument("--steps", type=int, default=None, help=f"timed steps per cell, after one warm-up step (default {QUICK['steps']})")
    ap.add_argument("--trl-rounds", type=int, default=None, help=f"interleaved kitchen/TRL rounds (default {QUICK['trl_rounds']})")
    ap.add_argument("--trl-steps", type=int, default=None, help=f"timed steps per round and loop (default {QUICK['trl_steps']})")
    ap.add_argument("--trl-batch", type=int, default=8)
    ap.add_argument("--trl-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the grid (default: every core this process may use)")
    ap.add_argument("--trl-threads", type=int, default=1,
                    help="torch threads for both loops of the TRL side by side (default 1: see trl_vs_kitchen)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: grid, extrapolate, trl")
    args = ap.parse_args()
    preset = FULL if args.full else QUICK
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - the bench extra brings it
        pass
    from kitchen.adapters.local.threads import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    skip = set(filter(None, args.skip.split(",")))
    log(f"bench_scale: torch {torch.__version__}, {threads} threads (TRL side by side: {args.trl_threads}), CPU fp32, LoRA r16; "
        f"machine load average {os.getloadavg()[0]:.1f} (shared machine: compare rows of one run, not across runs)")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp))
        if "grid" not in skip:
            log(f"\nGrid: model {BENCH_CONFIG['num_hidden_layers']} layers x {BENCH_CONFIG['hidden_size']}, vocab {BENCH_CONFIG['vocab_size']}")
            rows = grid(model_dir, [int(x) for x in args.batches.split(",")], [int(x) for x in args.lengths.split(",")], args.steps, threads)
            print_grid(rows)
        if "extrapolate" not in skip:
            log("\nExtrapolation (activations counted on CPU in fp32, halved for bf16; static = bf16 weights for LoRA, "
                "fp32 master + grads + AdamW for full):")
            print_extrapolation(extrapolate())
        if "trl" not in skip:
            log("\nTRL side by side:")
            trl_vs_kitchen(model_dir, args.trl_batch, args.trl_length, args.trl_steps, args.trl_rounds, args.trl_threads)


if __name__ == "__main__":
    main()
