"""The local backend's defaults (issue 21): precision=auto, max_tokens_per_micro_batch=auto and fused_loss=auto
choose, print and record in run.json what they chose and why; a resume keeps the precision and the budget of its
checkpoint; bad values are one paragraph and exit 2.

The hardware is faked where a test needs another answer than this machine's: a launcher replaces
``kitchen.adapters.local.scale.cpu_native_bf16`` (what /proc/cpuinfo says) or
``kitchen.adapters.local.budget.free_memory`` in the kitchen process, then runs the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Result, read_jsonl, step_losses, steps_of

pytest.importorskip("torch")

TINY = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "batch_size=4", "~test_dataset", "num_preview_samples=0",
        "telemetry=jsonl")
NO_BF16 = "no native bf16"


def kitchen_on(*args: str, bf16: str | None = "real", free_gb: float | None = None, timeout: float = 300) -> Result:
    """``kitchen ARGS`` in a process whose CPU reports ``bf16`` (a flag name, None for none, "real": untouched)
    and whose free memory is ``free_gb`` (None: untouched)."""
    code = ["import sys"]
    if bf16 != "real":
        code.append(f"import kitchen.adapters.local.scale as s; s.cpu_native_bf16 = lambda: {bf16!r}")
    if free_gb is not None:
        code.append("import kitchen.adapters.local.budget as b; "
                    f"b.free_memory = lambda device: (int({free_gb!r} * 1e9), 'the test')")
    code.append("from kitchen.cli.commands import main; sys.argv = ['kitchen', *sys.argv[1:]]; main()")
    proc = subprocess.run([sys.executable, "-c", "\n".join(code), *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=timeout)
    return Result(proc)


def assert_one_paragraph(r, *needles: str) -> None:
    assert r.code == 2, r
    assert "Traceback" not in r.text, r
    assert r.err.strip().startswith("error:") and "\n\n" not in r.err.strip(), r
    for needle in needles:
        assert needle in r.err, (needle, r)


def compute_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())["compute"]


# ------------------------------------------------------------------ what the defaults chose, recorded
def test_run_json_records_the_precision_the_budget_and_the_loss_kernel(tmp_path):
    from kitchen.adapters.local.scale import cpu_native_bf16

    run_dir = tmp_path / "default"
    r = kitchen_on("run", *TINY, "max_steps=2", f"run_dir={run_dir}")
    assert r.code == 0, r
    c = compute_of(run_dir)
    assert c["device"] == "cpu" and c["dtype"] == "float32"
    native = cpu_native_bf16()
    if native:  # this CPU computes bf16: auto chooses bf16 autocast over fp32 master weights, and says why
        assert c["compute_precision"] == "bf16"
        assert c["precision"] == f"bf16 autocast, fp32 master weights (auto: {native})"
    else:
        assert c["compute_precision"] == "fp32" and c["precision"].startswith("fp32 (auto: ")
    assert c["max_tokens_per_micro_batch"] >= 512  # never below max_length (512 in sl_basic)
    assert c["micro_batch_budget"].startswith(f"auto: {c['max_tokens_per_micro_batch']} tokens per pass (")
    assert "free by" in c["micro_batch_budget"] and "limited by" in c["micro_batch_budget"]
    assert c["loss_chunk_tokens"] == 256
    assert c["fused_loss"] == "none"  # fused_loss=auto on the CPU: the chunked torch path, and why
    assert c["fused_loss_note"] == "fused_loss=auto: no fused kernel on the CPU, the chunked torch path computes the loss"
    (session,) = [e["message"] for e in read_jsonl(run_dir / "events.jsonl")
                  if str(e.get("message", "")).startswith("session: ")]  # printed too (the console shows this line)
    assert f"precision={c['precision']}" in session and f"micro_batch_budget={c['micro_batch_budget']}" in session


def test_auto_is_fp32_on_a_cpu_without_bf16_and_explicit_values_win(tmp_path):
    run_dir = tmp_path / "nobf16"
    r = kitchen_on("run", *TINY, "max_steps=1", f"run_dir={run_dir}", bf16=None)
    assert r.code == 0, r
    c = compute_of(run_dir)
    assert c["compute_precision"] == "fp32"
    assert c["precision"] == "fp32 (auto: this CPU (no avx512_bf16 or amx_bf16 flag) computes bf16 only by emulation)"
    run_dir = tmp_path / "explicit"
    r = kitchen_on("run", *TINY, "max_steps=1", "precision=fp32", "max_tokens_per_micro_batch=600", "fused_loss=none",
                   f"run_dir={run_dir}", bf16="amx_bf16")
    assert r.code == 0, r
    c = compute_of(run_dir)
    assert (c["compute_precision"], c["precision"]) == ("fp32", "fp32 (precision=fp32)")
    assert c["max_tokens_per_micro_batch"] == 600 and "micro_batch_budget" not in c
    assert c["fused_loss"] == "none" and "fused_loss_note" not in c
    run_dir = tmp_path / "onepass"
    r = kitchen_on("run", *TINY, "max_steps=1", "max_tokens_per_micro_batch=null", f"run_dir={run_dir}")
    assert r.code == 0, r
    assert "max_tokens_per_micro_batch" not in compute_of(run_dir)  # one pass


# ------------------------------------------------------------------ bad values: exit 2, one paragraph
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bf16_without_native_bf16_is_refused_unless_forced(tmp_path, command):
    args = (command, *TINY, "max_steps=1", "precision=bf16", f"run_dir={tmp_path / 'x'}")
    r = kitchen_on(*args, bf16=None)
    assert_one_paragraph(r, "precision=bf16", "no native bf16", "emulate", "slower", "force_precision=true")
    assert not (tmp_path / "x" / "run.json").exists()
    r = kitchen_on(*args, "force_precision=true", bf16=None)
    assert r.code == 0, r
    if command == "run":
        c = compute_of(tmp_path / "x")
        assert c["compute_precision"] == "bf16" and "emulated: force_precision=true" in c["precision"]


@pytest.mark.parametrize(("overrides", "needles"), [
    (["fused_loss=liger"], ["fused_loss=liger needs the liger-kernel package", "crucible-kitchen[liger]", "fused_loss=auto"]),
    (["fused_loss=cut_cross_entropy"], ["cut-cross-entropy package", "crucible-kitchen[cce]"]),
    (["fused_loss=bogus"], ["'fused_loss' = 'bogus' is not allowed", "'auto', 'none', 'liger' or 'cut_cross_entropy'"]),
    (["loss_chunk_tokens=0"], ["'loss_chunk_tokens' = 0", "greater than 0"]),
    (["loss_chunk_tokens=-8"], ["'loss_chunk_tokens' = -8", "greater than 0"]),
    (["loss_chunk_tokens=2.5"], ["'loss_chunk_tokens' = 2.5", "integer"]),
    (["loss_chunk_tokens=many"], ["'loss_chunk_tokens' = 'many'", "integer"]),
    (["max_tokens_per_micro_batch=bogus"], ["'max_tokens_per_micro_batch' = 'bogus': must be auto", "0 / null"]),
    (["max_tokens_per_micro_batch=-1"], ["'max_tokens_per_micro_batch' = -1: must be auto"]),
    (["precision=fp16"], ["'precision' = 'fp16' is not allowed", "'auto', 'fp32' or 'bf16'"]),
])
def test_bad_compute_values_are_one_paragraph(tmp_path, overrides, needles):
    from kitchen.adapters.local.loss_head import kernel_installed

    if any(o.startswith("fused_loss=") and o.split("=")[1] in ("liger", "cut_cross_entropy") and kernel_installed(o.split("=")[1])
           for o in overrides):
        pytest.skip("the kernel is installed here")
    for command in ("validate", "run"):
        r = kitchen_on(command, *TINY, "max_steps=1", *overrides, f"run_dir={tmp_path / command}")
        assert_one_paragraph(r, *needles)
        assert not (tmp_path / command / "run.json").exists()


# ------------------------------------------------------------------ resume
def test_a_resume_in_another_precision_is_refused_unless_forced(tmp_path):
    run_dir = tmp_path / "fp32"
    r = kitchen_on("run", *TINY, "max_steps=4", "save_every=2", "precision=fp32", f"run_dir={run_dir}")
    assert r.code == 0, r
    r = kitchen_on("resume", str(run_dir), "resume_from=step_000002", "precision=bf16", bf16="amx_bf16")
    assert_one_paragraph(r, "Cannot resume", "trained in fp32", "precision=fp32", "force_precision=true")
    r = kitchen_on("resume", str(run_dir), "resume_from=step_000002", bf16="amx_bf16")  # auto would be bf16 here
    assert_one_paragraph(r, "Cannot resume", "in bf16", "trained in fp32")
    r = kitchen_on("resume", str(run_dir), "resume_from=step_000002", "precision=bf16", "force_precision=true",
                   bf16="amx_bf16")
    assert r.code == 0, r
    assert compute_of(run_dir)["compute_precision"] == "bf16"


def test_a_resume_keeps_the_auto_budget_and_is_bit_identical(tmp_path):
    """The first run has little free memory (the budget is max_length: several micro-batches per step); the
    resume has plenty (auto would now choose one pass), but keeps the checkpoint's budget, so the resumed steps
    equal the uninterrupted run's bit for bit, in the default precision."""
    args = (*TINY, "max_length=160", "max_steps=4", "save_every=2", "lr_schedule=cosine", "warmup_steps=1")
    run_dir = tmp_path / "run"
    r = kitchen_on("run", *args, f"run_dir={run_dir}", free_gb=0.0)
    assert r.code == 0, r
    first = compute_of(run_dir)
    assert first["max_tokens_per_micro_batch"] == 160 and "limited by max_length" in first["micro_batch_budget"]
    ref = step_losses(run_dir)
    assert all(row["micro_batches"] > 1 for row in steps_of(run_dir).values())
    r = kitchen_on("resume", str(run_dir), "resume_from=step_000002", free_gb=1000.0)
    assert r.code == 0, r
    resumed = compute_of(run_dir)
    assert resumed["max_tokens_per_micro_batch"] == 160
    assert resumed["micro_batch_budget"] == "auto: 160 tokens per pass, as the checkpoint recorded"
    assert resumed["compute_precision"] == first["compute_precision"]
    got = step_losses(run_dir)
    assert sorted(got) == [1, 2, 3, 4]
    assert all(got[s] == ref[s] for s in got), (got, ref)  # bit-identical
    # and the budget matters: a fresh run with plenty of memory takes one pass per step
    other = tmp_path / "plenty"
    r = kitchen_on("run", *args, f"run_dir={other}", free_gb=1000.0)
    assert r.code == 0, r
    assert compute_of(other)["max_tokens_per_micro_batch"] == 1024
    assert all(row.get("micro_batches", 1) == 1 for row in steps_of(other).values())
