"""Every fenced shell command in README.md and docs/ that starts with ``kitchen`` runs.

A doc example that breaks is a broken product for the user who copies it, so CI runs them:
README.md's commands and then each document's, in the order they are given, through the
installed ``kitchen`` script a user types, in one scratch directory (a later command finds
the run dirs an earlier one made: docs/backends.md samples the README's ``runs/try1``),
offline, with the data files the docs name written first.

Three tables say how a command is run here, keyed by the command exactly as the doc
writes it:

- ``ADAPT``: the command run instead, where the doc's would download a model, train
  SmolLM2 for minutes or has a placeholder (``[--step N | --base]``, ``...``). The tiny
  model (``model=tiny-llama``) or ``adapters=noop`` stand in; everything else is kept.
- ``SKIP``: why a command cannot run on a CI machine (it uploads, downloads, needs
  a cluster or edits your shell); another test covers each where one can.
- ``kitchen serve`` commands start the server in the background (``--port 0``, noop
  backend) and later commands' ``http://127.0.0.1:8000`` points at it: the real SDK
  talks to the real server.

A table entry whose command is no longer in the docs fails the test, so they cannot rot.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO
from data_fixtures import messages_rows, prompt_completion_rows, write_jsonl

# the order a reader meets them: recipes.md's sweeps make the dirs observability.md plots
FIRST = ["README.md", "docs/recipes.md", "docs/data.md", "docs/backends.md", "docs/observability.md"]
DOCS = FIRST + sorted(set(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")) - set(FIRST))
KITCHEN = Path(sys.executable).with_name("kitchen")
TINY = "model=tiny-llama"
ACCOUNT_KEY = "tml-docs-test-account"

# ---------------------------------------------------------------------------- the tables

ADAPT: dict[str, str] = {
    # the default recipe trains SmolLM2 for 100 steps: the same command on the tiny model
    "kitchen run": f"kitchen run {TINY} max_steps=4",
    "kitchen run recipe=sl_basic adapters=tinker learning_rate=3e-4":
        f"kitchen run recipe=sl_basic adapters=tinker learning_rate=3e-4 {TINY} max_steps=4",
    "kitchen run -m recipe=sl_basic learning_rate=1e-4,3e-4 lora_rank=8,32":
        f"kitchen run -m recipe=sl_basic learning_rate=1e-4,3e-4 lora_rank=8,32 {TINY} max_steps=2",
    "kitchen run recipe=sl_basic max_steps=50 run_dir=runs/try1": f"kitchen run recipe=sl_basic max_steps=50 run_dir=runs/try1 {TINY}",
    "kitchen run recipe=sl_basic run_dir=runs/try1 max_steps=80 resume=true":
        f"kitchen run recipe=sl_basic run_dir=runs/try1 max_steps=80 resume=true {TINY}",
    "kitchen run recipe=sl_basic micro_batch_size=2 activation_checkpointing=true":
        f"kitchen run recipe=sl_basic micro_batch_size=2 activation_checkpointing=true {TINY} max_steps=2",
    "kitchen run recipe=sl_basic padding_free=true length_grouped=true":
        f"kitchen run recipe=sl_basic padding_free=true length_grouped=true {TINY} max_steps=2",
    "kitchen run recipe=sl_basic distributed.nproc_per_node=2 run_dir=runs/dp2":
        f"kitchen run recipe=sl_basic distributed.nproc_per_node=2 run_dir=runs/dp2 {TINY} batch_size=4 max_steps=2",
    "kitchen run recipe=sl_basic adapters=tinker": f"kitchen run recipe=sl_basic adapters=tinker {TINY} max_steps=2",
    "TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-local-secret kitchen run recipe=sl_basic adapters=tinker":
        f"TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-local-secret kitchen run recipe=sl_basic adapters=tinker {TINY} max_steps=2",
    "TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-my-secret kitchen run recipe=sl_basic adapters=tinker":
        f"TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-my-secret kitchen run recipe=sl_basic adapters=tinker {TINY} max_steps=2",
    "kitchen sample runs/try1 --prompts prompts.jsonl --out out.jsonl [--step N | --base]":
        "kitchen sample runs/try1 --prompts prompts.jsonl --out out.jsonl --step 40",
    "kitchen export runs/try1 --step 40 --out my-adapter [--merge] [--push me/my-adapter]":
        "kitchen export runs/try1 --step 40 --out my-adapter --merge",
    "kitchen chat runs/try1 [--step N | --base] [--system \"Be brief.\"]":
        "kitchen chat runs/try1 --step 10 --system \"Be brief.\"",
    # data.md: its own files (written below), trained on the tiny model
    "kitchen run dataset=data/dialogs.jsonl dataset_columns.messages=dialog":
        f"kitchen run dataset=data/dialogs.jsonl dataset_columns.messages=dialog {TINY} max_steps=2",
    "kitchen run dataset=data/qa.csv dataset_columns.prompt=question dataset_columns.completion=answer":
        f"kitchen run dataset=data/qa.csv dataset_columns.prompt=question dataset_columns.completion=answer {TINY} max_steps=2",
    "kitchen run dataset=data/saved dataset_split=sft_train test_dataset=data/saved test_dataset_split=sft_eval":
        f"kitchen run dataset=data/saved dataset_split=sft_train test_dataset=data/saved test_dataset_split=sft_eval {TINY} max_steps=2",
    "kitchen run dataset=data/all.jsonl ~test_dataset test_split_fraction=0.05":
        f"kitchen run dataset=data/all.jsonl ~test_dataset test_split_fraction=0.05 {TINY} max_steps=2",
    # data.md, Mixing datasets (the list override holds braces: not f-strings)
    "kitchen data inspect 'dataset=[{path:data/train.jsonl,weight:0.7},{path:data/dialogs.jsonl,weight:0.3,columns:{messages:dialog}}]' -n 1 --color never":
        "kitchen data inspect 'dataset=[{path:data/train.jsonl,weight:0.7},{path:data/dialogs.jsonl,weight:0.3,columns:{messages:dialog}}]' -n 1 --color never " + TINY,
    "kitchen run 'dataset=[{path:data/train.jsonl,weight:0.7},{path:data/dialogs.jsonl,weight:0.3,columns:{messages:dialog}}]' max_steps=20 run_dir=runs/mix1":
        "kitchen run 'dataset=[{path:data/train.jsonl,weight:0.7},{path:data/dialogs.jsonl,weight:0.3,columns:{messages:dialog}}]' max_steps=2 run_dir=runs/mix1 " + TINY,
    "kitchen run recipe=sl_basic dataset_streaming=true run_dir=runs/stream1":
        f"kitchen run recipe=sl_basic dataset_streaming=true run_dir=runs/stream1 {TINY} max_steps=4",
    "kitchen data inspect recipe=sl_basic dataset_streaming=true -n 1": f"kitchen data inspect recipe=sl_basic dataset_streaming=true -n 1 {TINY}",
    "kitchen data inspect recipe=sl_basic": f"kitchen data inspect recipe=sl_basic {TINY}",
    "kitchen data inspect dataset=data/train.jsonl max_length=256 -n 5 --color never":
        f"kitchen data inspect dataset=data/train.jsonl max_length=256 -n 5 --color never {TINY}",
    "kitchen data inspect dataset=my.jsonl": f"kitchen data inspect dataset=my.jsonl {TINY}",
    # recipes.md: the sweep fragments, made whole
    "kitchen run recipe=sl_basic adapters=noop max_steps=2000 'telemetry.sinks=[console,jsonl,{prometheus: {port: 9464}}]'":
        "kitchen run recipe=sl_basic adapters=noop max_steps=20 'telemetry.sinks=[console,jsonl,{prometheus: {port: 9464}}]'",
    "kitchen run -m ... hydra/launcher=joblib hydra.launcher.n_jobs=2":
        "kitchen run -m recipe=sl_basic adapters=noop learning_rate=1e-4,3e-4 max_steps=2 hydra/launcher=joblib hydra.launcher.n_jobs=2",
    "kitchen run -m ... hydra.sweep.dir=multirun/lr-sweep":
        "kitchen run -m recipe=sl_basic adapters=noop learning_rate=1e-4,3e-4 max_steps=2 hydra.sweep.dir=multirun/lr-sweep",
}

SKIP: dict[str, str] = {
    "kitchen run model=Qwen/Qwen2.5-0.5B-Instruct model_revision=main": "downloads a 0.5B model (tests/unit/adapters/local/test_hub_models.py loads one from a populated cache)",
    "kitchen --install-completion": "edits your shell's rc file",
    "kitchen validate recipe=sl_basic adapters=modal adapters.training.gpu=A100-80GB":
        "needs a Modal token (tests/integration/test_modal_cli.py validates and runs adapters=modal against a loopback Modal control plane)",
    "kitchen run recipe=sl_basic adapters=modal adapters.training.gpu=H100 max_steps=100":
        "starts a paid Modal GPU (tests/integration/test_modal_cli.py trains through a loopback Modal control plane; make test-live on Modal)",
    "kitchen export runs/try1 --out final-adapter --push me/my-adapter": "uploads to the Hugging Face Hub (tests/unit/outputs/test_use_outputs.py pushes to a fake hub)",
    "kitchen run dataset=org/name dataset_subset=sharegpt test_dataset=org/name test_dataset_subset=sharegpt":
        "downloads from the hub (tests/integration/test_data_sources.py runs this shape against a hub cache it writes)",
    "kitchen run dataset=org/name dataset_subset=sharegpt dataset_streaming=true max_steps=2000 dataset_shuffle_buffer=10000":
        "downloads from the hub (tests/integration/test_data_streaming.py streams a hub-cache dataset)",
    "kitchen run recipe=sl_basic ... distributed.nproc_per_node=8 distributed.nnodes=2 distributed.rdzv_backend=c10d "
    "distributed.rdzv_endpoint=node0:29500 run_dir=/shared/runs/my-1b": "needs two machines with 8 GPUs each",
    "kitchen run -m hydra/launcher=submitit_slurm hydra.launcher.nodes=1 hydra.launcher.tasks_per_node=1 "
    "hydra.launcher.gpus_per_node=4 hydra.launcher.timeout_min=240 hydra.launcher.partition=gpu recipe=sl_basic "
    "distributed.nproc_per_node=4 learning_rate=1e-4,3e-4": "needs a SLURM cluster (tests/unit/runs/test_sweeps.py runs submitit_local)",
}

# commands the doc shows failing on purpose, with the exit code and a phrase of the paragraph
EXPECT_FAIL: dict[str, tuple[int, str]] = {
    "kitchen run recipe=sl_basic dpo_beta=0.2": (2, "dpo_beta"),
}


# ---------------------------------------------------------------------------- reading the docs

@dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str  # as written, continuations joined, the trailing comment dropped

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def strip_comment(line: str) -> str:
    """The command without its trailing ``# ...`` (a ``#`` inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def is_kitchen(command: str) -> bool:
    words = command.split()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    return bool(words) and words[0] == "kitchen"


def doc_commands(doc: str) -> list[DocCommand]:
    found, block, pending, start = [], False, "", 0
    for n, raw in enumerate((REPO / doc).read_text().splitlines(), 1):
        if raw.lstrip().startswith("```"):
            block, pending = not block, ""
            continue
        if not block:
            continue
        line = strip_comment(raw.strip().removeprefix("$ "))
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        command, pending = (pending + line).strip(), ""
        if is_kitchen(command):
            found.append(DocCommand(doc, start, command))
    return found


ALL = [c for doc in DOCS for c in doc_commands(doc)]


def test_the_tables_name_only_commands_the_docs_still_show():
    shown = {c.text for c in ALL}
    stale = sorted((set(ADAPT) | set(SKIP) | set(EXPECT_FAIL)) - shown)
    assert not stale, f"no doc shows these any more; drop them from the tables: {stale}"
    assert len(ALL) >= 40, [c.text for c in ALL]


# ---------------------------------------------------------------------------- the scratch dir

LOSS_ALARM = re.compile(r"```python\n# my_sinks.py\n(.*?)```", re.S)


def write_scratch(root: Path) -> None:
    """The files the docs' commands name, small, in the shapes the docs describe."""
    write_jsonl(root / "my.jsonl", messages_rows(24))
    write_jsonl(root / "data/train.jsonl", messages_rows(24))
    write_jsonl(root / "data/all.jsonl", messages_rows(40))
    write_jsonl(root / "data/dialogs.jsonl", [{"dialog": r["messages"]} for r in messages_rows(24)])
    rows = prompt_completion_rows(24)
    (root / "data/qa.csv").write_text("question,answer\n" + "".join(f"\"{r['prompt']}\",\"{r['completion']}\"\n" for r in rows))
    import datasets

    datasets.DatasetDict({"sft_train": datasets.Dataset.from_list(messages_rows(24)),
                          "sft_eval": datasets.Dataset.from_list(messages_rows(8))}).save_to_disk(str(root / "data/saved"))
    write_jsonl(root / "prompts.jsonl", [{"prompt": "What is 2 plus 2?"}, {"messages": [{"role": "user", "content": "Hi"}]}])
    sink = LOSS_ALARM.search((REPO / "docs/observability.md").read_text())
    assert sink, "docs/observability.md no longer shows my_sinks.py"
    (root / "my_sinks.py").write_text(sink.group(1))


# ---------------------------------------------------------------------------- running them

@dataclass
class Outcome:
    command: DocCommand
    ran: str
    code: int
    output: str
    seconds: float


def serve_in_background(ran: str, root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start the doc's ``kitchen serve`` on a free port with the noop backend; its base URL."""
    ready = root / f"serve-ready-{time.monotonic_ns()}.json"
    argv = shlex.split(ran.rstrip("& "))
    assigns = {}
    while "=" in argv[0] and not argv[0].startswith("kitchen"):
        key, _, value = argv.pop(0).partition("=")
        assigns[key] = value
    if "--port" in argv:
        i = argv.index("--port")
        del argv[i:i + 2]
    if "--state-dir" in argv:  # the doc's ~/kitchen-serve, kept inside the scratch dir
        i = argv.index("--state-dir")
        argv[i + 1] = str(root / "serve-state")
    argv = [str(KITCHEN), *argv[1:], "--port", "0", "--backend", "noop", "--ready-file", str(ready)]
    proc = subprocess.Popen(argv, cwd=root, env={**env, **assigns}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"{ran!r} did not start (exit {proc.poll()})"
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())["base_url"]


def run_docs(root: Path) -> list[Outcome]:
    write_scratch(root)
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("MLFLOW_TRACKING_URI", None)
    servers: list[subprocess.Popen] = []
    base_url = None
    outcomes = []
    try:
        # a Tinker account, for the commands that name adapters=tinker and no server of their own
        account, url = serve_in_background(f"KITCHEN_SERVE_API_KEY={ACCOUNT_KEY} kitchen serve", root, env)
        servers.append(account)
        env.update(TINKER_BASE_URL=url, TINKER_API_KEY=ACCOUNT_KEY)
        for command in ALL:
            if command.text in SKIP:
                continue
            ran = ADAPT.get(command.text) or command.text
            if " serve " in f" {ran} " and "--help" not in ran:
                proc, base_url = serve_in_background(ran, root, env)
                servers.append(proc)
                continue
            if base_url:
                ran = ran.replace("http://127.0.0.1:8000", base_url)
            argv = shlex.split(ran)
            assigns = {}
            while argv and argv[0] != "kitchen":
                key, _, value = argv.pop(0).partition("=")
                assigns[key] = value
            stdin = "Hello there\n/exit\n" if argv[1:2] == ["chat"] else None
            t0 = time.monotonic()
            proc = subprocess.run([str(KITCHEN), *argv[1:]], cwd=root, env={**env, **assigns}, input=stdin,
                                  capture_output=True, text=True, timeout=600)
            outcomes.append(Outcome(command, ran, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0))
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=30)
    return outcomes


def check(outcomes: list[Outcome]) -> list[str]:
    failures = []
    for o in outcomes:
        code, phrase = EXPECT_FAIL.get(o.command.text, (0, ""))
        if o.code != code or phrase not in o.output or "Traceback" in o.output:
            failures.append(f"{o.command.where}: `{o.command.text}` (ran `{o.ran}`) exited {o.code}, "
                            f"expected {code}:\n{o.output[-1500:]}")
    return failures


def test_every_kitchen_command_in_the_docs_runs(tmp_path):
    outcomes = run_docs(tmp_path)
    slowest = sorted(outcomes, key=lambda o: -o.seconds)[:5]
    print("slowest:", "; ".join(f"{o.command.where} {o.seconds:.1f}s" for o in slowest))
    failures = check(outcomes)
    assert not failures, f"{len(failures)} of {len(outcomes)} doc commands failed:\n\n" + "\n\n".join(failures)
