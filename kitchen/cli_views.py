"""What the read-only commands print: plans, recipe tables, describe, validate, runs, sweeps."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from kitchen.config.spec import RunSpec, describe_fields
from kitchen.engine.ir import ConditionalNode, LoopNode, Node, ParallelNode, StageNode

def _console() -> Console:
    """Terminal width on a terminal; 140 columns when piped, so tables stay readable in logs."""
    probe = Console()
    return Console(highlight=False, width=None if probe.is_terminal or os.environ.get("COLUMNS") else 140)


console = _console()


def stage_tree(nodes: Iterable[Node], root: Tree) -> Tree:
    for node in nodes:
        if isinstance(node, StageNode):
            root.add(f"[cyan]{node.title}[/]")
        elif isinstance(node, LoopNode):
            stage_tree(node.body, root.add(f"[magenta]loop[/] {node.name}"))
        elif isinstance(node, ConditionalNode):
            branch = root.add(f"[yellow]when[/] {node.label}")
            stage_tree(node.then, branch)
            if node.otherwise:
                stage_tree(node.otherwise, root.add("[yellow]otherwise[/]"))
        elif isinstance(node, ParallelNode):
            par = root.add(f"[green]parallel[/] {node.label} (max {node.max_concurrency})")
            for i, branch in enumerate(node.branches):
                stage_tree(branch, par.add(f"branch {i + 1}"))
    return root


def print_plan(spec: RunSpec, data: dict[str, Any]) -> None:
    import yaml
    from rich.syntax import Syntax

    from kitchen.telemetry.jsonl import redact
    from kitchen.workflows import get_workflow

    workflow = get_workflow(spec.workflow.name)
    console.rule(f"run spec: recipe {spec.recipe}")
    console.print(Syntax(yaml.safe_dump(redact(data), sort_keys=False), "yaml", background_color="default"))
    console.rule(f"stage plan: workflow {workflow.name}")
    console.print(stage_tree(workflow.nodes, Tree(f"[bold]{workflow.name}[/]: {workflow.description}")))


def print_recipes(found: dict[str, Any]) -> None:
    table = Table(title="recipes", show_lines=False)
    for col in ("name", "workflow", "adapters", "description"):
        table.add_column(col, overflow="fold")
    bundled = str(Path(__file__).resolve().parent.parent)
    for name, recipe in sorted(found.items()):
        where = "" if str(recipe.path.resolve()).startswith(bundled) else f" [dim]({recipe.path})[/]"
        table.add_row(name, recipe.workflow, recipe.adapters, recipe.description + where)
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_describe(recipe: Any, spec: RunSpec, all_keys: bool) -> None:
    from kitchen.workflows import get_workflow

    workflow = get_workflow(spec.workflow.name)
    console.print(f"[bold]{recipe.name}[/] ({recipe.path})")
    if recipe.description:
        console.print(recipe.description)
    for line in recipe.header:
        console.print(f"[dim]{line}[/]")
    console.print(f"workflow: [cyan]{workflow.name}[/]   adapters: [cyan]{spec.adapters.name}[/]")
    set_by_recipe = {k for k in recipe.body if k != "defaults"}
    shown = set(workflow.params) | set_by_recipe
    table = Table(title="hyperparameters (override with key=value)")
    for col in ("key", "type", "default", "this recipe", "description"):
        table.add_column(col, overflow="fold")
    hidden = 0
    for name, type_name, default, description in describe_fields():
        if name in ("workflow", "adapters", "telemetry", "recipe", "description"):
            continue
        if not all_keys and name not in shown:
            hidden += 1
            continue
        value = getattr(spec, name)
        mark = "[green]" + _fmt(value) + "[/]" if name in set_by_recipe else _fmt(value)
        table.add_row(name, type_name, _fmt(default), mark, description)
    console.print(table)
    if hidden:
        console.print(f"[dim]{hidden} more general keys: kitchen describe {recipe.name} --all[/]")
    console.print(stage_tree(workflow.nodes, Tree(f"[bold]stage tree[/]: {workflow.description}")))


def validate_run(spec: RunSpec) -> None:
    """Everything that can be checked without loading a model."""
    from kitchen.errors import BackendError
    from kitchen.rundir import RunDir
    from kitchen.workflows import get_workflow

    workflow = get_workflow(spec.workflow.name)
    RunDir(Path(spec.run_dir)).check_can_start(resume=spec.resume, overwrite=spec.overwrite)
    from kitchen.model_preflight import check_models  # issue 9: hub model, revision, chat_template, push_to_hub

    model_note = check_models(spec)
    rows: dict[str, int] = {}
    if spec.dataset or spec.test_dataset:
        from hydra.utils import instantiate

        store = instantiate(spec.adapters.dataset_store)
        for key in ("dataset", "test_dataset"):
            source = getattr(spec, key)
            if source:
                rows[key] = len(store.load(source))
    if spec.adapters.name == "tinker" and not os.environ.get("TINKER_API_KEY"):
        raise BackendError("adapters=tinker needs an API key in the TINKER_API_KEY environment variable, and it is not set. Export TINKER_API_KEY=... (it is never written to the run dir).")
    counts = ", ".join(f"{k}: {v} rows" for k, v in rows.items())
    console.print(f"[green]ok[/]: recipe {spec.recipe}, workflow {workflow.name}, adapters {spec.adapters.name}, model {spec.model}"
                  + (f" ({model_note})" if model_note else "") + (f", {counts}" if counts else "") + f"; would write to {spec.run_dir}")


def _find_runs(roots: Iterable[Path]) -> list[Path]:
    found = []
    for root in roots:
        if (root / "run.json").exists():
            found.append(root)
        elif root.is_dir():
            found += [p.parent for p in root.glob("*/run.json")] + [p.parent for p in root.glob("*/*/run.json")]
    return sorted(set(found))


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: trust the recorded status
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def print_runs(roots: Iterable[Path]) -> None:
    table = Table(title="runs")
    table.add_column("dir", overflow="fold")
    for col in ("recipe", "status", "steps", "final loss", "test nll", "duration", "started"):
        table.add_column(col, no_wrap=True)
    count = 0
    for path in _find_runs(roots):
        try:
            info = json.loads((path / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        count += 1
        metrics = info.get("final_metrics") or {}
        status = info.get("status", "?")
        if status == "running" and not _alive(info.get("pid")):
            status = "killed"  # it never recorded an ending; resume=true continues from its last checkpoint
        color = {"completed": "green", "failed": "red", "interrupted": "yellow", "killed": "yellow", "running": "cyan"}.get(status, "white")
        steps = f"{info.get('step', '-')}/{info.get('total_steps') or '-'}"
        started = info.get("started_at")
        started_s = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if isinstance(started, (int, float)) else "-"
        table.add_row(str(path), str(info.get("recipe", "-")), f"[{color}]{status}[/]", steps,
                      _fmt(metrics.get("loss")), _fmt(metrics.get("test_nll")), _duration(info.get("duration_s")), started_s)
    if count:
        console.print(table)
    else:
        console.print("no runs found under " + ", ".join(str(r) for r in roots))


def _varying(jobs: list[Any]) -> tuple[list[list[str]], list[str]]:
    """Split each job's overrides into the swept ones (differ between jobs) and the shared ones."""
    per_job = [list(job.overrides or []) for job in jobs]
    shared = [o for o in (per_job[0] if per_job else []) if all(o in other for other in per_job)]
    return [[o for o in ovs if o not in shared] for ovs in per_job], shared


def print_sweep_summary(jobs: list[Any]) -> int:
    swept, shared = _varying(jobs)
    table = Table(title="sweep summary", caption=("shared: " + " ".join(shared)) if shared else None)
    for col in ("job", "overrides", "status", "steps", "loss", "test nll", "run dir"):
        table.add_column(col, overflow="fold")
    failed = 0
    for num, job in enumerate(jobs):
        try:
            value = job.return_value or {}
        except Exception as exc:  # noqa: BLE001 - a launcher-level failure
            value = {"status": "failed", "error": str(exc)}
        status = value.get("status", "failed")
        if status != "completed":
            failed += 1
        metrics = value.get("metrics") or {}
        color = "green" if status == "completed" else "red"
        table.add_row(str(num), " ".join(swept[num]), f"[{color}]{status}[/]", str(value.get("step", "-")),
                      _fmt(metrics.get("loss")), _fmt(metrics.get("test_nll")), str(value.get("run_dir") or "-"))
    console.print(table)
    for num, job in enumerate(jobs):
        try:
            value = job.return_value or {}
        except Exception:  # noqa: BLE001
            continue
        if value.get("error"):
            console.print(f"[red]job {num} failed:[/] {value['error']}")
    return failed
