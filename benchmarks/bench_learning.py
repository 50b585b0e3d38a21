"""Do the RL, DPO and distillation recipes actually learn? Metric trajectories on SmolLM2-135M.

Runs each recipe through the real CLI (``python -m kitchen.cli.commands run ...``, local backend,
``smollm2-135m-instruct``) for ``--steps`` steps and prints the per-step metrics plus the
held-out evaluation before/after:

* rl      (rl_basic):      reward_mean / accuracy per step should rise; eval_accuracy before -> after.
* dpo     (dpo_basic):     dpo_accuracy > 0.5 and dpo_margin growing; eval_dpo_accuracy/margin before -> after.
* distill (distill_basic): teacher_kl per step should fall; eval_teacher_kl before -> after.

Distillation teacher: on-policy distillation needs a teacher that (a) shares the student's
tokenizer and (b) differs from it. Only SmolLM2-135M is available offline, so the teacher is
a kitchen RUN_DIR: a short ``sl_basic`` SFT run (``--teacher-steps``, LoRA merged into
``final/``) of the same model, which answers in the "Chef's note: ... Happy cooking!" house
style; the student is the untouched base model. Pass ``--teacher RUN_DIR`` to reuse one.

    .venv/bin/python benchmarks/bench_learning.py --workflow all --steps 12
    .venv/bin/python benchmarks/bench_learning.py --workflow dpo --steps 20 -- learning_rate=3e-4
    .venv/bin/python benchmarks/bench_learning.py --workflow distill --teacher runs/chef --steps 10

Extra ``key=value`` arguments after ``--`` are passed to every run. Expect minutes per
workflow on 2 CPU cores (the first run also converts the model, ~20 s). The numbers are
printed, not asserted: a few steps on a 135M model are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WORKFLOWS = {
    "rl": ("rl_basic", ("reward_mean", "accuracy", "entropy", "sampled_tokens", "loss")),
    "dpo": ("dpo_basic", ("dpo_loss", "dpo_accuracy", "dpo_margin", "chosen_reward", "rejected_reward")),
    "distill": ("distill_basic", ("teacher_kl", "entropy", "sampled_tokens", "loss")),
}


def run(recipe: str, run_dir: Path, overrides: list[str], model: str) -> float:
    cmd = [sys.executable, "-m", "kitchen.cli", "run", f"recipe={recipe}", "adapters=local", f"model={model}",
           f"run_dir={run_dir}", "telemetry=jsonl", *overrides]
    print(f"\n$ {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    took = time.time() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"{recipe} failed (exit {proc.returncode})")
    print(f"  done in {took:.0f} s", flush=True)
    return took


def read(run_dir: Path) -> tuple[dict[int, dict], list[dict]]:
    steps, evals = {}, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("split") is None:
            steps[row["step"]] = row
        else:
            evals.append(row)
    return steps, evals


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def third_means(values: list[float]) -> tuple[float, float]:
    k = max(1, len(values) // 3)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def report(name: str, run_dir: Path, keys: tuple[str, ...], took: float) -> dict:
    steps, evals = read(run_dir)
    print(f"\n== {name}: {len(steps)} steps in {took:.0f} s  ({run_dir})")
    print("  step  " + "  ".join(f"{k:>15}" for k in keys))
    for s in sorted(steps):
        print(f"  {s:4d}  " + "  ".join(f"{fmt(steps[s].get(k)):>15}" for k in keys))
    for e in evals:
        body = "  ".join(f"{k} {fmt(v)}" for k, v in e.items() if k not in ("step", "split"))
        print(f"  eval @ step {e['step']}: {body}")
    out: dict = {"steps": len(steps), "seconds": round(took, 1)}
    series = {k: [steps[s][k] for s in sorted(steps) if isinstance(steps[s].get(k), (int, float))] for k in keys}
    if name == "rl" and series["reward_mean"]:
        a, b = third_means(series["reward_mean"])
        out["reward_mean first/last third"] = (round(a, 3), round(b, 3))
        print(f"  reward_mean: first third {a:.3f} -> last third {b:.3f}  [{'rising' if b > a else 'NOT rising'}]")
    if name == "dpo" and series["dpo_accuracy"]:
        a, b = third_means(series["dpo_accuracy"])
        m0, m1 = third_means(series["dpo_margin"])
        out["dpo_accuracy first/last third"] = (round(a, 3), round(b, 3))
        out["dpo_margin first/last third"] = (round(m0, 4), round(m1, 4))
        print(f"  dpo_accuracy: {a:.3f} -> {b:.3f} [{'> 0.5' if b > 0.5 else 'NOT > 0.5'}];  dpo_margin: {m0:.4f} -> {m1:.4f} [{'growing' if m1 > m0 else 'NOT growing'}]")
    if name == "distill" and series["teacher_kl"]:
        a, b = third_means(series["teacher_kl"])
        out["teacher_kl first/last third"] = (round(a, 4), round(b, 4))
        print(f"  teacher_kl: first third {a:.4f} -> last third {b:.4f}  [{'falling' if b < a else 'NOT falling'}]")
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        out["eval"] = {k: (first[k], last.get(k)) for k in first if k not in ("step", "split")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workflow", choices=["rl", "dpo", "distill", "all"], default="all")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--teacher", default=None, help="distillation teacher (RUN_DIR/model); default: a fresh short sl_basic run")
    ap.add_argument("--teacher-steps", type=int, default=20)
    ap.add_argument("--out", default=None, help="folder for the run dirs (default runs/bench-learning-TIMESTAMP)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run (after --)")
    args = ap.parse_args()
    out = Path(args.out or REPO / "runs" / f"bench-learning-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = ["rl", "dpo", "distill"] if args.workflow == "all" else [args.workflow]
    summary = {}
    for name in names:
        recipe, keys = WORKFLOWS[name]
        overrides = [f"max_steps={args.steps}", *args.overrides]
        if name == "distill":
            teacher = args.teacher
            if teacher is None:
                teacher_dir = out / "teacher-sl"
                run("sl_basic", teacher_dir, [f"max_steps={args.teacher_steps}", "eval_every=0", "save_every=0", "num_preview_samples=0"], args.model)
                teacher = str(teacher_dir)
            overrides.append(f"teacher={teacher}")
        run_dir = out / name
        took = run(recipe, run_dir, overrides, args.model)
        summary[name] = report(name, run_dir, keys, took)
    print("\n== summary")
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
