"""Tokenization benchmark: kitchen's SFT data path against a plain chat-template loop.

Builds N synthetic 8-turn conversations (16 messages each) and tokenizes them with the
SmolLM2 tokenizer three ways, side by side in one run:

* ``plain``: ``for m in rows: tokenizer.apply_chat_template(m, tokenize=True)``: token
  ids only, no per-token weights, no checks;
* ``kitchen``: ``kitchen.data.token_cache.tokenize_to_table`` in one process: the same
  rows rendered with per-message spans and training weights into an Arrow table;
* ``kitchen num_proc=2``: the same through ``datasets.map`` in 2 processes.

The three run in interleaved rounds (``--rounds``), so they share the machine's load;
the best round of each is reported, with the load average.

Then, in a fresh subprocess, the whole path a run takes for ``--rss-rows`` rows (write a
JSONL file, load it through the DatasetStore, detect the format, normalise, tokenize with
num_proc=2 into the Arrow cache) and its peak RSS. Rows stay on disk (the store indexes
the JSONL file by line offsets) and tokens stream into the Arrow cache, so peak RSS does
not grow with the row count; ``--rss-rows 1000000`` shows it at 1M rows (~25 min on 2 cores).

    .venv/bin/python benchmarks/bench_tokenize.py [--rows 20000] [--rounds 3] [--rss-rows 100000]

Goal (issue 9): kitchen >= 1.0x the plain loop in one process and >= 1.6x with num_proc=2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def conversation(i: int, turns: int = 8) -> list[dict]:
    msgs = []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Question {i}.{t}: how long do I roast {t + 2} carrots at {180 + i % 40} degrees?"})
        msgs.append({"role": "assistant", "content": f"Roast them for {20 + t} minutes, turning once; season with salt number {i}."})
    return msgs


def rss_mb() -> tuple[float, float]:
    """Peak RSS of this process and of its (waited-for) children, in MB.

    This process's own peak comes from /proc's VmHWM where there is one: Linux carries
    ``ru_maxrss`` across exec, so a child started by a large parent would report the
    parent's peak as its own.
    """
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) / 1024
    except OSError:
        pass
    return own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale


def rss_child(n: int) -> None:
    """The run's data path at n rows; prints one JSON line."""
    from kitchen.adapters.hf_datasets import HFDatasetStore
    from kitchen.adapters.local.models import load_tokenizer
    from kitchen.data.load import load_split
    from kitchen.data.token_cache import cached_sft_data
    from kitchen.train.renderers import build_renderer

    tmp = Path(tempfile.mkdtemp(prefix="kitchen-bench-"))
    path = tmp / "rows.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": conversation(i)}) + "\n")
    base = rss_mb()[0]
    t0 = time.perf_counter()
    part = load_split(HFDatasetStore(), str(path))
    loaded = rss_mb()[0]
    renderer = build_renderer("auto", load_tokenizer("smollm2-135m-instruct"), max_length=None)
    data, stats, _ = cached_sft_data(str(path), lambda: part.rows, None, renderer, cache_dir=tmp / "cache",
                                     source_fingerprint=part.fingerprint, extra=part.extra, num_proc=2)
    seconds = time.perf_counter() - t0
    entry = sum(f.stat().st_size for f in (tmp / "cache").rglob("*") if f.is_file())
    own, children = rss_mb()
    kept = len(data)
    del data
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"rows": n, "seconds": seconds, "rss_after_start_mb": base, "rss_after_load_mb": loaded,
                      "peak_rss_mb": own, "peak_rss_workers_mb": children, "arrow_cache_mb": entry / 2**20,
                      "tokens": stats.total_tokens, "kept": kept}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the best of each side counts)")
    ap.add_argument("--rss-rows", type=int, default=100000,
                    help="rows for the peak-RSS run (0 skips it; 1000000 for the issue's 1M figure: ~25 min on 2 cores)")
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return

    from kitchen.adapters.local.models import load_tokenizer
    from kitchen.data.token_cache import table_stats, tokenize_to_table
    from kitchen.train.renderers import build_renderer

    tok = load_tokenizer("smollm2-135m-instruct")
    rows = [{"messages": conversation(i)} for i in range(args.rows)]
    renderer = build_renderer("auto", tok, max_length=None)
    renderer.build_supervised(rows[0]["messages"])  # warm the template and the plan, as both sides are warm

    def plain_loop() -> int:
        n = 0
        for r in rows:
            ids = tok.apply_chat_template(r["messages"], tokenize=True)
            n += len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return n

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    # interleaved rounds: the three run side by side under the same machine load; the best round of each counts
    plain, single, multi = [], [], []
    for _ in range(args.rounds):
        seconds, n_plain = timed(plain_loop)
        plain.append(seconds)
        seconds, one = timed(lambda: tokenize_to_table(rows, renderer, "sft", "bench", num_proc=1))
        single.append(seconds)
        seconds, two = timed(lambda: tokenize_to_table(rows, renderer, "sft", "bench", num_proc=2))
        multi.append(seconds)
        assert one.combine_chunks().equals(two.combine_chunks())
    plain, single, multi = min(plain), min(single), min(multi)
    n_kitchen = table_stats(one).total_tokens + table_stats(one).kept

    print(f"tokenize {args.rows} synthetic 8-turn conversations (SmolLM2 tokenizer, {os.cpu_count()} CPUs, "
          f"best of {args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.2f})")
    print(f"  plain apply_chat_template loop : {args.rows / plain:8.0f} rows/s  ({n_plain} tokens)")
    print(f"  kitchen, 1 process             : {args.rows / single:8.0f} rows/s  ({n_kitchen} tokens)  {plain / single:.2f}x")
    print(f"  kitchen, num_proc=2            : {args.rows / multi:8.0f} rows/s  {plain / multi:.2f}x")
    if args.rss_rows:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(args.rss_rows)], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-2000:])
            raise SystemExit(1)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"run data path at {res['rows']} rows (JSONL -> store -> format -> tokenize num_proc=2 -> Arrow cache): "
              f"{res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB (rows loaded: {res['rss_after_load_mb']:.0f} MB; "
              f"largest worker {res['peak_rss_workers_mb']:.0f} MB), Arrow cache {res['arrow_cache_mb']:.0f} MB, "
              f"{res['tokens']} tokens")


if __name__ == "__main__":
    main()
