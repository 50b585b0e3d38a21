"""What the read-only commands print: plans, recipe tables, describe, validate, runs, sweeps."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape
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
    from kitchen.telemetry.sinks import resolve_sinks

    resolve_sinks(spec.telemetry.sinks)  # issue 10: unknown sink names and missing tracker extras, as `run` checks them
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
                  + (f", {counts}" if counts else "") + f"; would write to {spec.run_dir}")


def _find_runs(roots: Iterable[Path]) -> list[Path]:
    found = []
    for root in roots:
        if (root / "run.json").exists():
            found.append(root)
        elif root.is_dir():  # issue 10: anywhere below the root (sweep jobs sit two or more levels down)
            found += [p.parent for p in root.rglob("run.json") if "checkpoints" not in p.parent.parts]
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


def _varying(records: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """Split each job's overrides into the swept ones (differ between jobs) and the shared ones."""
    per_job = [list(r.get("overrides") or []) for r in records]
    shared = [o for o in (per_job[0] if per_job else []) if all(o in other for other in per_job)] if len(per_job) > 1 else []
    return [[o for o in ovs if o not in shared] for ovs in per_job], shared


def print_sweep_summary(records: list[dict[str, Any]]) -> int:
    """One row per job (records from kitchen.sweeps), best objective first; returns the failure count.

    issue 10: sorted by the objective when the sweep has one, with the best job named below.
    """
    from kitchen.sweeps import rank

    objective = next((r.get("objective_name") for r in records if r.get("objective_name")), None)
    mode = next((r.get("objective_mode") for r in records if r.get("objective_mode")), "min")
    ordered = rank(records, mode) if objective else list(records)
    swept, shared = _varying(ordered)
    title = f"sweep summary: {objective} ({'lower' if mode == 'min' else 'higher'} is better)" if objective else "sweep summary"
    table = Table(title=title, caption=("shared: " + " ".join(shared)) if shared else None)
    extra = [(k, label) for k, label in (("loss", "loss"), ("test_nll", "test nll")) if k != objective]
    cols = ["job", "overrides", "status", "steps"] + ([f"{objective} (objective)"] if objective else []) + [label for _, label in extra] + ["run dir"]
    for col in cols:
        table.add_column(col, overflow="fold")
    failed = 0
    for i, rec in enumerate(ordered):
        status = str(rec.get("status") or "failed")
        if status != "completed":
            failed += 1
        metrics = rec.get("metrics") or {}
        color = "green" if status == "completed" else "red"
        row = [str(rec.get("job", "-")), " ".join(swept[i]), f"[{color}]{status}[/]", str(rec.get("step") if rec.get("step") is not None else "-")]
        if objective:
            row.append(_fmt(rec.get("objective")))
        row += [_fmt(metrics.get(k)) for k, _ in extra] + [str(rec.get("run_dir") or "-")]
        table.add_row(*row)
    console.print(table)
    if objective:
        best = ordered[0] if ordered and isinstance(ordered[0].get("objective"), (int, float)) else None
        if best is not None:
            console.print(f"[bold green]best:[/] job {best.get('job')} ({' '.join(swept[0]) or 'no swept keys'}) "
                          f"{objective} {_fmt(best['objective'])} -> {best.get('run_dir')}", soft_wrap=True)
        else:
            console.print(f"[red]no job finished with a value for {objective}[/]")
    for rec in records:
        if rec.get("error"):
            console.print(f"[red]job {rec.get('job')} failed:[/] {escape(str(rec['error']))}", soft_wrap=True)
    if not records:
        console.print("[red]no sweep job reported back[/] (see the launcher's log above)")
    return failed
