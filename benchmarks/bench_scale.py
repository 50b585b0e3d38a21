"""Memory and time per step of the local backend at scale; TRL's SFTTrainer side by side.

    make bench-scale                         # the default, short run (a few minutes on 2 busy cores)
    .venv/bin/python benchmarks/bench_scale.py --lengths 256,512,1024,2048 --batches 4,8,16,32 --steps 2

1. **Grid.** A Llama-shaped model built from a config dict with random weights (speed and
   memory do not depend on the weights): vocabulary 8192, tied embeddings, hidden 128,
   2 layers: small, so that the default grid runs in minutes on two shared cores; the
   real models' numbers come from the extrapolation (3). Random token streams long
   enough to fill every length. For batch
   size in {4, 8, 16, 32} at length 256 and length in {512, 1024, 2048} at batch 4, with
   LoRA r16 in fp32: time per step and peak memory, for the single pass, a token budget
   per micro-batch (``max_tokens_per_micro_batch``), activation checkpointing, and both.
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
   interleaved (kitchen, TRL, kitchen, TRL...) so that load on the machine hits both
   alike; tokens/s from the median step and peak step memory. Goal: kitchen >= 1.2x TRL at
   equal or lower memory. Skipped with a note when trl is not installed (``pip install
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


def kitchen_steps(client, data, steps: int) -> tuple[list[float], float, float]:
    """(step seconds, peak step memory, last loss) after one warm-up step."""
    from kitchen.ports.types import AdamParams

    adam = AdamParams(learning_rate=1e-4)
    client.forward_backward(data).result()
    client.optim_step(adam).result()
    times, peak, loss = [], 0, 0.0
    for _ in range(steps):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r = client.forward_backward(data).result()
            client.optim_step(adam).result()
            times.append(time.perf_counter() - t0)
        peak = max(peak, mem.peak)
        loss = r.loss
    return times, peak, loss


# ------------------------------------------------------------------ grid
MODES = {
    "single pass": {},
    "micro 1024 tok": {"budget": 1024},
    "checkpointing": {"activation_checkpointing": True},
    "micro + ckpt": {"budget": 1024, "activation_checkpointing": True},
}


def grid(model_dir: Path, batches: list[int], lengths: list[int], steps: int, threads: int) -> list[dict]:
    workloads = [(b, lengths[0]) for b in batches] + [(batches[0], L) for L in lengths[1:]]
    rows = []
    for b, L in workloads:
        data = datums(token_rows(b, L))
        for mode, opts in MODES.items():
            scale = {k: v for k, v in opts.items() if k != "budget"}
            if "budget" in opts:
                scale["max_tokens_per_micro_batch"] = max(opts["budget"], L)
            client = kitchen_client(model_dir, threads, **scale)
            times, peak, loss = kitchen_steps(client, data, steps)
            client.close()
            del client
            _trim()
            med = statistics.median(times)
            rows.append(dict(batch=b, length=L, mode=mode, step_s=med, tok_s=b * L / med, peak_mib=peak / MIB, loss=loss))
            log(f"  batch {b:>2} x len {L:>4}  {mode:<15} {med:7.2f} s/step {b * L / med:8.0f} tok/s  peak +{peak / MIB:7.0f} MiB  loss {loss:.4f}")
    return rows


def print_grid(rows: list[dict]) -> None:
    log("\n| batch | length | mode | s/step | tokens/s | peak step memory (MiB) | loss |")
    log("|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        log(f"| {r['batch']} | {r['length']} | {r['mode']} | {r['step_s']:.2f} | {r['tok_s']:.0f} | {r['peak_mib']:.0f} | {r['loss']:.4f} |")


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

        def pack(t):
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
    rows = token_rows(batch * (steps + 1) * rounds, length, seed=7)
    data = datums(rows)
    results = {"kitchen": {"times": [], "peak": 0}, "trl": {"times": [], "peak": 0}}

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.peak, self.mem, self.t0, self.n = [], 0, None, 0.0, 0

        def on_step_begin(self, args, state, control, **kw):
            self.n += 1
            if self.n > 1:  # the first step warms up
                self.mem = PeakRSS().__enter__()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self.t0
            if self.mem is not None:
                self.mem.__exit__()
                self.peak = max(self.peak, self.mem.peak)
                self.times.append(dt)
                self.mem = None

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    for r in range(rounds):
        chunk = data[r * batch * (steps + 1) : (r + 1) * batch * (steps + 1)]
        client = kitchen_client(model_dir, threads, activation_checkpointing=True)
        times, peak, _ = kitchen_steps(client, chunk[:batch], steps)
        client.close()
        del client
        _trim()
        results["kitchen"]["times"] += times
        results["kitchen"]["peak"] = max(results["kitchen"]["peak"], peak)

        ds = Dataset.from_list([{"input_ids": row[:length], "completion_mask": [1] * length} for row in rows[:batch * (steps + 1)]])
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        timer = Timer()
        with tempfile.TemporaryDirectory() as out:
            cfg = SFTConfig(output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                            max_steps=steps + 1, learning_rate=1e-4, gradient_checkpointing=True,
                            gradient_checkpointing_kwargs={"use_reentrant": False}, max_length=length,
                            packing=False, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                            dataloader_num_workers=0, bf16=False, fp16=False, seed=0, disable_tqdm=True,
                            shuffle_dataset=False)
            trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                                 peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
                                 callbacks=[timer])
            trainer.train()
        del trainer, model
        _trim()
        results["trl"]["times"] += timer.times
        results["trl"]["peak"] = max(results["trl"]["peak"], timer.peak)
        log(f"  round {r + 1}: kitchen {statistics.median(times):.2f} s/step, TRL {statistics.median(timer.times):.2f} s/step")
    tokens = batch * length
    k_tps = tokens / statistics.median(results["kitchen"]["times"])
    t_tps = tokens / statistics.median(results["trl"]["times"])
    out = dict(batch=batch, length=length, kitchen_tps=k_tps, trl_tps=t_tps, ratio=k_tps / t_tps,
               kitchen_peak=results["kitchen"]["peak"] / MIB, trl_peak=results["trl"]["peak"] / MIB)
    log(f"\nTRL SFTTrainer vs kitchen, LoRA r16 fp32, batch {batch} x {length}, gradient/activation checkpointing on both, "
        f"{rounds} interleaved rounds x {steps} steps:")
    log("| loop | tokens/s (median step) | peak step memory (MiB) |")
    log("|---|---:|---:|")
    log(f"| kitchen | {k_tps:.0f} | {out['kitchen_peak']:.0f} |")
    log(f"| TRL SFTTrainer | {t_tps:.0f} | {out['trl_peak']:.0f} |")
    log(f"kitchen / TRL tokens/s = {out['ratio']:.2f}x (goal >= 1.2x), memory kitchen / TRL = "
        f"{out['kitchen_peak'] / max(out['trl_peak'], 1):.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="4,8,16,32")
    ap.add_argument("--lengths", default="256,512,1024,2048")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per grid cell, after one warm-up step")
    ap.add_argument("--trl-rounds", type=int, default=2)
    ap.add_argument("--trl-batch", type=int, default=8)
    ap.add_argument("--trl-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: every core this process may use)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: grid, extrapolate, trl")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from kitchen.adapters.local.client import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    skip = set(filter(None, args.skip.split(",")))
    log(f"bench_scale: torch {torch.__version__}, {threads} threads, CPU fp32, LoRA r16; "
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
            trl_vs_kitchen(model_dir, args.trl_batch, args.trl_length, max(2, args.steps + 1), args.trl_rounds, threads)


if __name__ == "__main__":
    main()
