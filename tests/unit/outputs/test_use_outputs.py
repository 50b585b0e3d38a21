"""Using and publishing a trained model: `kitchen export`, `sample`, `chat`, push_to_hub.

One run on the tiny model saved as a local bf16 dir (so "the base model's dtype" is not
the fp32 it trains in), with checkpoints at steps 2 and 4. Exports are loaded with plain
transformers / peft, and their logits compared with each other.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import REPO, read_jsonl
from hub_fake import save_tiny_model

RUN = ("recipe=sl_basic", "adapters=local", "batch_size=4", "~test_dataset", "num_preview_samples=0",
       "max_steps=4", "save_every=2", "eval_every=0", "learning_rate=3e-2", "telemetry=jsonl")
PROMPTS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I salt pasta water?"}]},
    {"prompt": "Name a herb."},
    "What is a roux?",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import run_kitchen

    root = tmp_path_factory.mktemp("use")
    base = save_tiny_model(root / "base", dtype="bfloat16")
    run = root / "run"
    r = run_kitchen("run", *RUN, f"model={base}", f"run_dir={run}")
    assert r.code == 0, r
    return base, run


class _Res:
    def __init__(self, result) -> None:
        self.code, self.out, self.err = result.exit_code, result.stdout, result.stderr

    def __repr__(self) -> str:
        return f"<exit {self.code}>\nstdout:\n{self.out[-3000:]}\nstderr:\n{self.err[-3000:]}"


@pytest.fixture
def cli():
    """The real Typer app, in this process (one torch import for many commands)."""
    from typer.testing import CliRunner

    from kitchen.cli.commands import app

    runner = CliRunner()
    return lambda *args, **kw: _Res(runner.invoke(app, list(args), **kw))


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def test_export_any_checkpoint_loads_with_plain_peft_and_transformers(cli, trained, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, run = trained
    for args, out in ((("--step", "2"), "a2"), (("--step", "2", "--merge"), "m2"), ((), "afinal")):
        r = cli("export", str(run), "--out", str(tmp_path / out), *args)
        assert r.code == 0, r
    cfg = json.loads((tmp_path / "a2" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve())  # the true base: this local dir
    assert "step 2" in (tmp_path / "a2" / "README.md").read_text()
    assert "library_name: transformers" in (tmp_path / "m2" / "README.md").read_text()
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["dtype"] == "bfloat16"
    # Published weights follow the umask like any other file (transformers writes model.safetensors
    # through a 0600 temporary), so a serving process or a teammate in the group can read them.
    mask = os.umask(0o022)
    os.umask(mask)
    for d in (run / "final", tmp_path / "m2", tmp_path / "a2"):
        for p in (d, *d.rglob("*")):
            want = (0o777 if p.is_dir() else 0o666) & ~mask
            assert stat.S_IMODE(p.stat().st_mode) == want, p

    ids = list(range(3, 40))
    load = lambda p: AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)  # noqa: E731
    peft2 = PeftModel.from_pretrained(load(base), str(tmp_path / "a2"))
    merged2 = load(tmp_path / "m2")
    peft_final = PeftModel.from_pretrained(load(base), str(tmp_path / "afinal"))
    final = load(run / "final")
    plain = load(base)
    l_peft2, l_merged2 = _logits(peft2, ids), _logits(merged2, ids)
    l_final, l_peft_final, l_base = _logits(final, ids), _logits(peft_final, ids), _logits(plain, ids)
    tol = dict(atol=0.05, rtol=0)  # the merged dirs are bf16
    assert torch.allclose(l_peft2, l_merged2, **tol)
    assert torch.allclose(l_peft_final, l_final, **tol)
    assert not torch.allclose(l_peft2, l_peft_final, atol=0.05)  # step 2 is not the final weights
    assert not torch.allclose(l_peft2, l_base, atol=0.05)  # and it is trained


def test_export_refuses_bad_input(cli, trained, tmp_path):
    _, run = trained
    r = cli("export", str(run), "--step", "3", "--out", str(tmp_path / "x"))
    assert r.code == 2 and "steps 2, 4" in r.err and "Traceback" not in r.err, r
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    r = cli("export", str(run), "--out", str(tmp_path / "full"))
    assert r.code == 2 and "not an empty directory" in r.err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    r = cli("export", str(tmp_path), "--out", str(tmp_path / "y"))
    assert r.code == 2 and "not a kitchen run directory" in r.err


def test_refusals_come_before_torch_is_imported(kitchen, tmp_path):
    """A typo'd path, a noop run's missing weights and an absent step are answered without
    the seconds-long torch import (and export makes no temp dir for a run it cannot read)."""
    run = tmp_path / "noop-run"
    r = kitchen("run", "recipe=sl_basic", "adapters=noop", "max_steps=2", "telemetry=jsonl", f"run_dir={run}")
    assert r.code == 0, r
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"hi"\n')
    cases = [
        (["chat", str(tmp_path / "nonexist")], "not a kitchen run directory"),
        (["sample", str(tmp_path / "nonexist"), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")],
         "not a kitchen run directory"),
        (["chat", str(run)], "adapters=noop"),
        (["export", str(run), "--out", str(tmp_path / "out")], "adapters=noop"),
    ]
    code = (
        "import sys\nfrom kitchen.cli.commands import main\n"
        "sys.argv = ['kitchen'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    for args, says in cases:
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                              timeout=120, stdin=subprocess.DEVNULL)
        assert proc.stdout.strip().splitlines()[-1] == "exit 2 False", (args, proc.stdout, proc.stderr)
        assert says in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.export-*"))
    run_missing_step = subprocess.run([sys.executable, "-c", code, "chat", str(run), "--base", "--step", "1"],
                                      capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "exclude each other" in run_missing_step.stderr


def test_sample_final_checkpoint_and_base(cli, trained, tmp_path):
    _, run = trained
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    outs = {}
    for name, extra in (("final", ()), ("step2", ("--step", "2")), ("base", ("--base",)), ("final_again", ())):
        out = tmp_path / f"{name}.jsonl"
        r = cli("sample", str(run), "--prompts", str(prompts), "--out", str(out), "--max-tokens", "12",
                    "--temperature", "0", *extra)
        assert r.code == 0, r
        rows = read_jsonl(out)
        assert [row["index"] for row in rows] == [0, 1, 2] and [row["prompt"] for row in rows] == PROMPTS
        assert all(isinstance(row["completion"], str) and row["num_tokens"] >= 1 for row in rows)
        outs[name] = [row["completion"] for row in rows]
    assert outs["final"] == outs["final_again"]  # greedy is deterministic
    assert outs["final"] != outs["base"] or outs["step2"] != outs["base"]
    out = tmp_path / "multi.jsonl"
    r = cli("sample", str(run), "--prompts", str(prompts), "--out", str(out), "--max-tokens", "6",
                "--num-samples", "3", "--seed", "7", "--temperature", "1.0", "--top-p", "0.9")
    assert r.code == 0, r
    assert all(len(row["completions"]) == 3 for row in read_jsonl(out))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{"text": "no prompt"}\n')
    r = cli("sample", str(run), "--prompts", str(bad), "--out", str(tmp_path / "b.jsonl"))
    assert r.code == 2 and f"{bad}, line 2" in r.err and "keys seen: text" in r.err and "Traceback" not in r.err, r


def test_chat_streams_replies_from_piped_stdin(cli, trained, tmp_path):
    _, run = trained
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps("What is a roux?") + "\n")
    out = tmp_path / "o.jsonl"
    r = cli("sample", str(run), "--prompts", str(prompts), "--out", str(out), "--max-tokens", "10", "--temperature", "0")
    assert r.code == 0, r
    expected = read_jsonl(out)[0]["completion"]
    proc = subprocess.run(
        [sys.executable, "-m", "kitchen.cli", "chat", str(run), "--max-tokens", "10", "--temperature", "0"],
        input="What is a roux?\n/reset\nWhat is a roux?\n/exit\nnever read\n", capture_output=True, text=True,
        cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    replies = [chunk.split("\n(history cleared)")[0] for chunk in proc.stdout.split("assistant> ")[1:]]
    assert len(replies) == 2 and "(history cleared)" in proc.stdout
    # The streamed reply is the model's greedy completion (the same as `kitchen sample`'s).
    assert replies[0].rstrip("\n") == expected.rstrip("\n") == replies[1].rstrip("\n")
    assert "never read" not in proc.stdout


def test_push_without_network_keeps_everything(kitchen, tmp_path):
    run = tmp_path / "run"
    nohub = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_secretTOKEN123"}
    r = kitchen("run", *RUN, "max_steps=2", "model=tiny-llama", "push_to_hub=me/tiny-run", f"run_dir={run}", env=nohub)
    assert r.code == 2 and "Traceback" not in r.err, r
    assert "Nothing was lost" in r.err and "me/tiny-run" in r.err
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "adapter" / "README.md").is_file()
    assert (run / "checkpoints" / "checkpoints.jsonl").is_file()
    r = kitchen("export", str(run), "--out", str(tmp_path / "e"), "--push", "me/tiny-run", env=nohub)
    assert r.code == 2 and "Nothing was lost" in r.err and (tmp_path / "e" / "adapter_model.safetensors").is_file(), r
    for f in run.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".md"):
            assert "hf_secretTOKEN123" not in f.read_text(errors="ignore"), f


def test_push_to_hub_uploads_final_through_huggingface_hub(kitchen, tmp_path):
    """push_to_hub= against a loopback hub. HF_HUB_DISABLE_XET=1: the fake hub speaks the
    plain commit API (preupload + NDJSON commit), not Xet storage."""
    from hub_fake import FakeHub, serve_fake_hub

    hub = FakeHub({})
    run = tmp_path / "run"
    with serve_fake_hub(hub) as url:
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_secretTOKEN456"}
        r = kitchen("run", *RUN, "max_steps=2", "model=tiny-llama", "push_to_hub=me/tiny-run", f"run_dir={run}", env=env)
        assert r.code == 0, r
        r = kitchen("export", str(run), "--step", "2", "--out", str(tmp_path / "a2"), "--push", "me/tiny-a2", env=env)
        assert r.code == 0, r
    pushed = hub.uploads["me/tiny-run"]
    local = {str(p.relative_to(run / "final")): p.read_bytes() for p in (run / "final").rglob("*") if p.is_file()}
    assert pushed == local and "adapter/adapter_config.json" in pushed and "model.safetensors" in pushed
    assert set(hub.uploads["me/tiny-a2"]) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert "me/tiny-run" in json.loads((run / "run.json").read_text())["pushed_to"]
    for f in run.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".md"):
            assert "hf_secretTOKEN456" not in f.read_text(errors="ignore"), f
