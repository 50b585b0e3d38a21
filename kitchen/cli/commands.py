"""The `kitchen` command line.

Heavy imports (Hydra, torch, transformers, the tinker SDK) happen inside commands, so
`kitchen --help`, `recipes`, `describe` and `validate` stay fast and never touch torch.
User mistakes (KitchenError) print one paragraph and exit 2; `--debug` adds the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kitchen.errors import KitchenError

app = typer.Typer(
    name="kitchen",
    help="Crucible Kitchen: post-training (SFT, RL, DPO, distillation) from YAML recipes, on a local GPU/CPU or the Tinker service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode="rich",
)

_STATE = {"debug": bool(os.environ.get("KITCHEN_DEBUG"))}

OverridesArg = typer.Argument(None, help="Hydra overrides: key=value, group=choice (recipe, workflow, adapters, telemetry), +key=value, ~key, hydra.*")
RecipesDirOpt = typer.Option(None, "--recipes-dir", "-r", help="Extra recipe directory (repeatable; also KITCHEN_RECIPES_PATH).")


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(exc: KitchenError) -> None:
    if _STATE["debug"]:
        import traceback

        traceback.print_exception(exc)
    from rich.markup import escape

    from kitchen.io.secrets import redact_text  # a URL's token in a dataset= error never reaches the terminal

    _stderr().print(f"[bold red]error:[/] {escape(redact_text(exc.render()))}", markup=True)  # keep "[wandb]" in messages
    raise typer.Exit(exc.exit_code)


def _guard(fn):
    """Run a command body; KitchenError -> one paragraph on stderr and exit 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KitchenError as exc:
            _fail(exc)

    return wrapper


@app.callback()
def main_callback(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for user errors too.")) -> None:
    if debug:
        _STATE["debug"] = True


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_guard
def run(
    overrides: Optional[List[str]] = OverridesArg,
    multirun: bool = typer.Option(False, "--multirun", "-m", help="Sweep: comma-separated values become a Hydra multirun."),
    cfg: bool = typer.Option(False, "--cfg", help="Print the resolved run spec and stage plan; run nothing."),
    recipes_dir: Optional[List[str]] = RecipesDirOpt,
) -> None:
    """Run a recipe: `kitchen run recipe=sl_basic adapters=local learning_rate=3e-4`."""
    overrides = list(overrides or [])
    recipes_dir = list(recipes_dir or [])
    from kitchen.runs.preflight import compose_spec

    if multirun:
        _run_sweep(overrides, recipes_dir)
        return
    spec, workflow, data, _ = compose_spec(overrides, recipes_dir)
    if cfg:
        from kitchen.cli.views import print_plan

        print_plan(spec, workflow, data)
        return
    from kitchen.runs import distributed as kdist
    from kitchen.runs.execute import execute_prepared
    from kitchen.runs.preflight import preflight

    if spec.distributed.nproc_per_node > 1 and not kdist.under_launcher():
        preflight(spec, workflow)  # fail before starting any rank
        raise typer.Exit(kdist.launch_run(spec)["exit_code"])  # the same command on N ranks (torch.distributed.run)
    if kdist.is_distributed():
        spec = kdist.join_run(spec)  # one rank of a torchrun job: the process group, rank 0's run dir
    result = execute_prepared(preflight(spec, workflow))
    raise typer.Exit(result.exit_code)


def _run_sweep(overrides: list[str], recipes_dir: list[str]) -> None:
    """A Hydra multirun; jobs report through a shared JSONL file (kitchen.runs.sweeps), so optimising
    sweepers (Optuna) that keep the job returns to themselves still get a summary."""
    import tempfile

    from kitchen.cli.views import print_sweep_summary
    from kitchen.config.compose import expand_sweep, launch
    from kitchen.runs.preflight import compose_spec, preflight
    from kitchen.runs.sweeps import SWEEP_LOG_ENV, SWEEP_RECIPES_ENV, read_records, sweep_overrides, sweep_task

    # Every value the sweep will try is preflighted first, so a bad one fails before Hydra
    # creates the sweep directory.
    for job_overrides in expand_sweep(overrides):
        spec, workflow, _, _ = compose_spec(job_overrides, recipes_dir)
        preflight(spec, workflow, check_run_dir=False)  # Hydra gives each job a fresh sweep subdir

    with tempfile.TemporaryDirectory(prefix="kitchen-sweep-") as tmp:
        log_path = os.path.join(tmp, "jobs.jsonl")
        os.environ[SWEEP_LOG_ENV] = log_path
        os.environ[SWEEP_RECIPES_ENV] = os.pathsep.join(os.path.abspath(d) for d in recipes_dir)
        stopped = None
        try:
            launch(sweep_overrides(overrides), sweep_task, multirun=True, recipe_dirs=recipes_dir)
        except KitchenError:
            raise
        except Exception as exc:
            if _STATE["debug"]:
                raise
            stopped = f"{type(exc).__name__}: {exc}"
        finally:
            os.environ.pop(SWEEP_LOG_ENV, None)
            os.environ.pop(SWEEP_RECIPES_ENV, None)
        records = read_records(log_path)
    failed = print_sweep_summary(records)
    if stopped:
        _stderr().print(f"[bold red]error:[/] the sweeper stopped: {stopped}", markup=True, highlight=False)
    raise typer.Exit(1 if failed or stopped or not records else 0)


@app.command()
@_guard
def resume(
    run_dir: Path = typer.Argument(..., help="A run directory written by `kitchen run`."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value changes, e.g. max_steps=200."),
) -> None:
    """Continue a run from its last complete checkpoint (same as re-running with resume=true).

    A run saved with ``distributed.nproc_per_node=N`` resumes on N ranks through torch's launcher,
    as ``kitchen run`` started it; under ``torchrun ... -m kitchen resume DIR`` each rank joins the job."""
    from kitchen.config.compose import setup
    from kitchen.runs import distributed as kdist
    from kitchen.runs.execute import execute_prepared
    from kitchen.runs.preflight import build_spec, preflight
    from kitchen.runs.resume import resume_config  # every malformed input is one paragraph
    from kitchen.workflows import get_workflow

    config = run_dir / "config.yaml"
    data = resume_config(run_dir, list(overrides or []))
    setup()  # plugins' workflows by name
    spec, _ = build_spec(data, source=str(config))
    if spec.distributed.nproc_per_node > 1 and not kdist.under_launcher():
        preflight(spec, get_workflow(spec.workflow.name))  # fail before starting any rank
        raise typer.Exit(kdist.launch_run(spec, pin_run_dir=False)["exit_code"])
    if kdist.is_distributed():
        spec = kdist.join_run(spec)
    result = execute_prepared(preflight(spec, get_workflow(spec.workflow.name)))
    raise typer.Exit(result.exit_code)


@app.command()
@_guard
def recipes(recipes_dir: Optional[List[str]] = RecipesDirOpt) -> None:
    """List the available recipes."""
    from kitchen.cli.views import print_recipes
    from kitchen.config.catalog import check_workflows, warn_once
    from kitchen.config.recipes import discover

    found = discover(recipes_dir or [])
    for package, why in check_workflows().values():
        warn_once(why, key=package)  # one warning per broken plugin
    print_recipes(found)


@app.command()
@_guard
def plugins() -> None:
    """List the named parts (workflows, envs, renderers, evaluators, sinks, stages) and where each comes from."""
    from kitchen.cli.views import print_plugins

    print_plugins()


@app.command()
@_guard
def describe(
    name: str = typer.Argument(..., help="Recipe name."),
    all_keys: bool = typer.Option(False, "--all", help="Show every hyperparameter, not only the workflow's."),
    recipes_dir: Optional[List[str]] = RecipesDirOpt,
) -> None:
    """Show a recipe's hyperparameters (type, default, recipe value) and its workflow's stage tree."""
    from kitchen.cli.views import print_describe
    from kitchen.runs.preflight import compose_spec

    spec, workflow, _, found = compose_spec([f"recipe={name}"], recipes_dir or [])
    print_describe(found[name], spec, workflow, all_keys)


@app.command()
@_guard
def validate(overrides: Optional[List[str]] = OverridesArg, recipes_dir: Optional[List[str]] = RecipesDirOpt) -> None:
    """Check a run's config, data, model, run dir and credentials, as `kitchen run` would, without starting it."""
    from kitchen.cli.views import print_validated
    from kitchen.runs.preflight import compose_spec, preflight

    spec, workflow, _, _ = compose_spec(list(overrides or []), recipes_dir or [])
    print_validated(preflight(spec, workflow))


@app.command()
@_guard
def runs(
    roots: Optional[List[Path]] = typer.Argument(None, help="Folders to scan (default: runs/ and multirun/)."),
    root: Optional[List[Path]] = typer.Option(None, "--root", help="Find runs anywhere below this folder, sweeps included (repeatable)."),
) -> None:
    """List past runs: dir, recipe, status, steps, final loss, duration."""
    from kitchen.cli.views import print_runs

    print_runs([*(roots or []), *(root or [])] or [Path("runs"), Path("multirun")])


@app.command()
@_guard
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, help="Port (0 picks a free one)."),
    backend: str = typer.Option("local", help="local (torch) or noop."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="A model to serve (repeatable; default: HuggingFaceTB/SmolLM2-135M-Instruct and tiny-llama)."),
    state_dir: Optional[Path] = typer.Option(None, help="Where checkpoints, sampler weights and run metadata persist (default: a temp dir)."),
    latency_ms: float = typer.Option(0.0, help="Injected server-side latency per call (benchmarks)."),
    faults: Optional[str] = typer.Option(None, help="Injected faults, e.g. 'forward_backward:503:2,optim_step:stall:1' (tests; also KITCHEN_SERVE_FAULTS)."),
    stall_s: Optional[float] = typer.Option(None, help="How long a 'stall' fault holds a request (default 30)."),
    ready_file: Optional[Path] = typer.Option(None, help="Write the bound port here once listening."),
    api_key_env: Optional[str] = typer.Option(None, help="Environment variable holding the API key (default KITCHEN_SERVE_API_KEY, then TINKER_API_KEY)."),
    log_level: str = typer.Option("WARNING", help="DEBUG, INFO (one access line per request), WARNING, ERROR."),
    max_loaded_samplers: int = typer.Option(4, help="Sampler weight sets kept in memory (LRU; the rest stay on disk)."),
    max_body_mb: float = typer.Option(256.0, help="Largest request body accepted (413 beyond)."),
    max_decompression_ratio: float = typer.Option(64.0, help="Largest zstd expansion accepted (413 beyond)."),
    workers: int = typer.Option(16, help="Threads answering requests (a bounded pool)."),
    read_timeout_s: float = typer.Option(60.0, help="Time allowed to send a request body (408 beyond)."),
    idle_timeout_s: float = typer.Option(30.0, help="Idle keep-alive connections are closed after this."),
    header_timeout_s: float = typer.Option(10.0, help="A connection must send its request head within this, else it is closed (slow-header guard)."),
    max_connections: int = typer.Option(1024, help="Open connections in total; at the limit the oldest idle one without the API key is closed to make room."),
    max_connections_per_client: int = typer.Option(256, help="Open connections per client address, same rule."),
    max_headers: int = typer.Option(100, help="Header lines per request (431 beyond)."),
    max_header_kb: float = typer.Option(64.0, help="Size of a request head: request line and headers (431 beyond)."),
    precision: str = typer.Option("fp32", help="Local backend: fp32, bf16 or auto, for clients that send none (kitchen's adapter sends its run's)."),
    api_key_file: Optional[Path] = typer.Option(None, help="Several API keys, one per line: each key sees only the sessions, checkpoints and exports it created."),
    max_sample_tokens_per_request: int = typer.Option(262_144, help="num_samples x (prompt + max_tokens) one sample request may ask for (400 beyond)."),
    max_sample_tokens_in_flight: int = typer.Option(1_048_576, help="Sample tokens admitted at once across all clients (429 beyond)."),
    result_ttl_s: float = typer.Option(600.0, help="A finished result nobody retrieves is freed after this."),
    max_user_metadata_kb: float = typer.Option(64.0, help="Size of a session's user_metadata (400 beyond)."),
    max_json_body_mb: float = typer.Option(16.0, help="Size of a JSON request body once decoded (413 beyond)."),
    max_models_per_session: int = typer.Option(64, help="Models one session may create (400 beyond)."),
    max_models: int = typer.Option(256, help="Models the server holds in all (429 beyond)."),
    shutdown_timeout_s: float = typer.Option(30.0, help="On SIGTERM, how long running work may take before the server exits 0 anyway."),
    public_url: Optional[str] = typer.Option(None, help="The base URL signed download URLs name (default: the bind address; never the request's Host header)."),
) -> None:
    """Serve the Tinker REST API on this machine, backed by a kitchen backend.

    The API key clients must send comes from KITCHEN_SERVE_API_KEY or TINKER_API_KEY
    (never a command-line argument), or from --api-key-file; with none set, one is generated
    and written to a 0600 file in the state dir, which the log names.
    Then: TINKER_BASE_URL=http://127.0.0.1:PORT TINKER_API_KEY=... kitchen run adapters=tinker
    """
    # options are validated in kitchen/serve/options.py (exit 2, one paragraph)
    from kitchen.serve.options import ServeOptions

    opts = ServeOptions(host=host, port=port, backend=backend, models=list(model or []),
                        state_dir=str(state_dir) if state_dir else None, latency_ms=latency_ms, faults=faults,
                        stall_s=stall_s, ready_file=str(ready_file) if ready_file else None, api_key_env=api_key_env,
                        log_level=log_level, max_loaded_samplers=max_loaded_samplers, max_body_mb=max_body_mb,
                        max_decompression_ratio=max_decompression_ratio, workers=workers,
                        read_timeout_s=read_timeout_s, idle_timeout_s=idle_timeout_s,
                        header_timeout_s=header_timeout_s, max_connections=max_connections,
                        max_connections_per_client=max_connections_per_client, max_headers=max_headers,
                        max_header_kb=max_header_kb, precision=precision,
                        api_key_file=str(api_key_file) if api_key_file else None,
                        max_sample_tokens_per_request=max_sample_tokens_per_request,
                        max_sample_tokens_in_flight=max_sample_tokens_in_flight, result_ttl_s=result_ttl_s,
                        max_user_metadata_kb=max_user_metadata_kb, max_json_body_mb=max_json_body_mb,
                        max_models_per_session=max_models_per_session, max_models=max_models,
                        shutdown_timeout_s=shutdown_timeout_s, public_url=public_url).validate()
    from kitchen.serve import run_server

    raise typer.Exit(run_server(opts))


@app.command()
@_guard
def plot(
    run_dirs: List[Path] = typer.Argument(..., help="Run dirs, or folders above them such as a sweep dir."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated metrics (default: loss and every eval metric)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write a PNG here (a .png path; matplotlib); without it, draw in the terminal."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
) -> None:
    """Training and evaluation curves from metrics.jsonl, one line per run."""
    from kitchen.outputs.plot import plot as draw

    chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    result = draw(run_dirs, chosen, out, force=force)
    typer.echo(f"wrote {result}" if out is not None else result)


# -- `kitchen data inspect` (body in kitchen/data/inspection.py) ----------------------
data_app = typer.Typer(help="Look at a run's data before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_guard
def data_inspect(
    overrides: Optional[List[str]] = OverridesArg,
    examples: int = typer.Option(3, "--examples", "-n", help="Rendered train examples to show."),
    color: str = typer.Option("auto", "--color", help="auto | always | never (never: trained text between [[ ]])."),
    recipes_dir: Optional[List[str]] = RecipesDirOpt,
) -> None:
    """Detected format, row/token statistics and rendered examples (trained tokens coloured); tokenizer only, no weights."""
    from kitchen.data.inspection import inspect_data
    from kitchen.runs.preflight import compose_spec

    spec, _, _, _ = compose_spec(list(overrides or []), recipes_dir or [])
    inspect_data(spec, examples=examples, color=color)
    from kitchen.config.data_follow import announce

    announce()


# --- use and publish a trained model (bodies in kitchen/outputs/generate.py, kitchen/outputs/export.py) ---
StepOpt = typer.Option(None, "--step", help="Use the checkpoint at this step instead of the final weights.")
BaseOpt = typer.Option(False, "--base", help="Use the run's base model (before training).")
MaxTokOpt = typer.Option(256, "--max-tokens", min=1, help="Tokens to generate per reply.")
TempOpt = typer.Option(0.7, "--temperature", min=0.0, help="0 = greedy.")
TopPOpt = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")
TopKOpt = typer.Option(-1, "--top-k", help="Keep the k most likely tokens (-1 = off).")
SeedOpt = typer.Option(None, "--seed", help="Make sampling reproducible.")


@app.command()
@_guard
def sample(
    run_dir: Path = typer.Argument(..., help="A run directory written by `kitchen run` (local backend)."),
    prompts: Path = typer.Option(..., "--prompts", help='JSONL: {"messages": [...]}, {"prompt": "..."} or a JSON string per line.'),
    out: Path = typer.Option(..., "--out", help="JSONL written with one line per prompt, in order."),
    step: Optional[int] = StepOpt,
    base: bool = BaseOpt,
    max_tokens: int = MaxTokOpt,
    temperature: float = TempOpt,
    top_p: float = TopPOpt,
    top_k: int = TopKOpt,
    seed: Optional[int] = SeedOpt,
    num_samples: int = typer.Option(1, "--num-samples", min=1, help="Completions per prompt."),
) -> None:
    """Generate a completion for every prompt in a JSONL file, with the model's chat template."""
    from kitchen.outputs.generate import Options, sample_file

    opts = Options(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, num_samples=num_samples)
    count = sample_file(run_dir, prompts, out, step=step, base=base, opts=opts)
    _stderr().print(f"wrote {count} completions to {out}")


@app.command()
@_guard
def chat(
    run_dir: Path = typer.Argument(..., help="A run directory written by `kitchen run` (local backend)."),
    step: Optional[int] = StepOpt,
    base: bool = BaseOpt,
    system: Optional[str] = typer.Option(None, "--system", help="A system message for the conversation."),
    max_tokens: int = MaxTokOpt,
    temperature: float = TempOpt,
    top_p: float = TopPOpt,
    top_k: int = TopKOpt,
    seed: Optional[int] = SeedOpt,
) -> None:
    """Chat with a trained model in the terminal; replies stream token by token (/reset, /exit)."""
    from kitchen.outputs.generate import Options
    from kitchen.outputs.generate import chat as chat_loop

    chat_loop(run_dir, step=step, base=base, system=system,
              opts=Options(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed))


@app.command()
@_guard
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `kitchen run` (local backend)."),
    out: Path = typer.Option(..., "--out", help="New directory to write (must not exist or be empty)."),
    step: Optional[int] = typer.Option(None, "--step", help="Export this checkpoint instead of final/."),
    merge: bool = typer.Option(False, "--merge", help="Merged transformers weights instead of a PEFT adapter."),
    push: Optional[str] = typer.Option(None, "--push", help="Also upload the exported dir to this hub repo (org/name)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="adapter (default), merged, or gguf (one file at --out, for llama.cpp/Ollama)."),
    gguf: bool = typer.Option(False, "--gguf", help="Same as --format gguf: base + merged LoRA, tokenizer and chat template in one file, and an Ollama Modelfile beside it."),
    quant: str = typer.Option("f16", "--quant", help="GGUF tensor type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1."),
) -> None:
    """Write a run's weights as a PEFT adapter dir, a merged transformers dir (with a model card) or a GGUF file."""
    from kitchen.outputs.export import export as export_run

    if gguf:
        if fmt and fmt.strip().lower() != "gguf":
            from kitchen.errors import ConfigError

            raise ConfigError(f"--gguf and --format {fmt} ask for two formats; pass one of them.")
        fmt = "gguf"
    where = export_run(run_dir, out, step=step, merge=merge, push=push, fmt=fmt, quant=quant)
    what = "a GGUF file" if (fmt or "").lower() == "gguf" else ("merged weights" if merge or (fmt or "").lower() == "merged" else "the adapter")
    extra = f" (Ollama: {where}.Modelfile)" if what == "a GGUF file" else ""
    _stderr().print(f"exported {what} to {where}{extra}" + (f" and pushed to {push}" if push else ""))


@app.command("eval")
@_guard
def eval_(
    target: str = typer.Argument(..., help="A run directory written by `kitchen run` (local backend), or a model: a hub id, a local directory, tiny-llama."),
    tasks: str = typer.Option(..., "--tasks", help="lm-eval tasks, comma-separated: names lm-eval lists, kitchen_arith (bundled, offline) or task YAML files."),
    step: Optional[int] = typer.Option(None, "--step", help="Score this checkpoint of the run instead of final/."),
    base: bool = BaseOpt,
    limit: Optional[float] = typer.Option(None, "--limit", help="At most this many examples per task (a fraction < 1: that share)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="Few-shot examples per prompt (default: the task's)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Requests per forward pass."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the full results JSON here (a run's default: RUN_DIR/evals/lm_eval-<weights>.json)."),
) -> None:
    """Score a run's weights (or any model) on lm-evaluation-harness tasks, with lm-eval's own HF model class."""
    from kitchen.outputs.evaluate import evaluate_weights, table

    count = int(limit) if limit is not None and limit >= 1 and float(limit).is_integer() else limit
    run = evaluate_weights(target, [t for t in tasks.split(",") if t.strip()], step=step, base=base, limit=count,
                           num_fewshot=num_fewshot, batch_size=batch_size, output=output)
    print(table(run))
    _stderr().print(f"scored {run.label}" + (f"; results in {run.written}" if run.written else ""))


def _importable_from_cwd() -> None:
    """Let ``_target_: my_sinks.LossAlarm`` find ``./my_sinks.py``, as ``python -m`` and Hydra apps do.

    The installed ``kitchen`` script puts its own bin dir first on ``sys.path``, not the
    directory it was run from. The cwd goes last, so a local file never shadows an
    installed package.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def main() -> None:
    _importable_from_cwd()
    try:
        app()
    except KitchenError as exc:  # raised outside a guarded command (e.g. in a Hydra task)
        try:
            _fail(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
