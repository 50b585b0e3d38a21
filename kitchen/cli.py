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
    _stderr().print(f"[bold red]error:[/] {exc.render()}", markup=True)
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


def _compose_spec(overrides: list[str], recipes_dir: list[str]):
    from kitchen.config.compose import compose, setup, to_container
    from kitchen.config.spec import RunSpec

    found = setup(recipes_dir)
    cfg = compose(overrides, found=found)
    data = to_container(cfg)
    from kitchen.config.compose import describe_source

    return RunSpec.from_config(data, source=describe_source(data.get("recipe"))), data, found


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
    if cfg:
        spec, data, _ = _compose_spec(overrides, recipes_dir)
        from kitchen.cli_views import print_plan

        print_plan(spec, data)
        return
    if multirun:
        _run_sweep(overrides, recipes_dir)
        return
    from kitchen.app import hydra_task
    from kitchen.config.compose import launch

    result = launch(overrides, hydra_task, multirun=False, recipe_dirs=recipes_dir)
    value = result.return_value
    if value.get("user_error") is not None:
        raise value["user_error"]
    if "exit_code" in value:  # issue 11: the exit code of a job launched on several ranks
        raise typer.Exit(value["exit_code"])
    raise typer.Exit({"completed": 0, "interrupted": 130}.get(value.get("status"), 1))


def _run_sweep(overrides: list[str], recipes_dir: list[str]) -> None:
    from kitchen.app import hydra_sweep_task
    from kitchen.cli_views import print_sweep_summary
    from kitchen.config.compose import launch

    returns = launch(overrides, hydra_sweep_task, multirun=True, recipe_dirs=recipes_dir)
    jobs = [job for batch in (returns or []) for job in batch]
    failed = print_sweep_summary(jobs)
    raise typer.Exit(1 if failed else 0)


@app.command()
@_guard
def resume(
    run_dir: Path = typer.Argument(..., help="A run directory written by `kitchen run`."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value changes, e.g. max_steps=200."),
) -> None:
    """Continue a run from its last complete checkpoint (same as re-running with resume=true)."""
    import yaml
    from omegaconf import OmegaConf

    from kitchen.app import execute
    from kitchen.config.compose import to_container
    from kitchen.config.spec import RunSpec
    from kitchen.errors import RunDirError

    config = run_dir / "config.yaml"
    if not config.exists():
        raise RunDirError(f"{run_dir} has no config.yaml, so it is not a kitchen run directory. Pass the run_dir of an earlier `kitchen run`.")
    data = yaml.safe_load(config.read_text())
    merged = OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(list(overrides or [])))
    data = to_container(merged)
    data.update(run_dir=str(run_dir), resume=True, overwrite=False)
    spec = RunSpec.from_config(data, source=str(config))
    result = execute(spec)
    raise typer.Exit(result.exit_code)


@app.command()
@_guard
def recipes(recipes_dir: Optional[List[str]] = RecipesDirOpt) -> None:
    """List the available recipes."""
    from kitchen.cli_views import print_recipes
    from kitchen.config.recipes import discover

    print_recipes(discover(recipes_dir or []))


@app.command()
@_guard
def describe(
    name: str = typer.Argument(..., help="Recipe name."),
    all_keys: bool = typer.Option(False, "--all", help="Show every hyperparameter, not only the workflow's."),
    recipes_dir: Optional[List[str]] = RecipesDirOpt,
) -> None:
    """Show a recipe's hyperparameters (type, default, recipe value) and its workflow's stage tree."""
    from kitchen.cli_views import print_describe

    spec, data, found = _compose_spec([f"recipe={name}"], recipes_dir or [])
    print_describe(found[name], spec, all_keys)


@app.command()
@_guard
def validate(overrides: Optional[List[str]] = OverridesArg, recipes_dir: Optional[List[str]] = RecipesDirOpt) -> None:
    """Check a run's config, data files, run dir and credentials without starting it."""
    from kitchen.cli_views import validate_run

    spec, data, _ = _compose_spec(list(overrides or []), recipes_dir or [])
    validate_run(spec)


@app.command()
@_guard
def runs(
    roots: Optional[List[Path]] = typer.Argument(None, help="Folders to scan (default: runs/ and multirun/)."),
) -> None:
    """List past runs: dir, recipe, status, steps, final loss, duration."""
    from kitchen.cli_views import print_runs

    print_runs(roots or [Path("runs"), Path("multirun")])


@app.command()
@_guard
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, help="Port (0 picks a free one)."),
    backend: str = typer.Option("local", help="local (torch) or noop."),
    state_dir: Optional[Path] = typer.Option(None, help="Where checkpoints and tokenizers live (default: a temp dir)."),
    latency_ms: float = typer.Option(0.0, help="Injected server-side latency per call (benchmarks)."),
    faults: Optional[str] = typer.Option(None, help="Injected faults, e.g. 'forward_backward:503:2,optim_step:stall:1' (tests; also KITCHEN_SERVE_FAULTS)."),
    ready_file: Optional[Path] = typer.Option(None, help="Write the bound port here once listening."),
) -> None:
    """Serve the Tinker REST API on this machine, backed by a kitchen backend.

    The API key clients must send comes from KITCHEN_SERVE_API_KEY or TINKER_API_KEY
    (never a command-line argument); with neither set, one is generated and printed once.
    Then: TINKER_BASE_URL=http://127.0.0.1:PORT TINKER_API_KEY=... kitchen run adapters=tinker
    """
    from kitchen.serve import run_server

    run_server(host=host, port=port, backend=backend, latency_ms=latency_ms, faults=faults,
               ready_file=str(ready_file) if ready_file else None, state_dir=str(state_dir) if state_dir else None)


def main() -> None:
    try:
        app()
    except KitchenError as exc:  # raised outside a guarded command (e.g. in a Hydra task)
        try:
            _fail(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
