"""What the read-only commands print: plans, recipe tables, describe, validate, runs, sweeps."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from kitchen.config.spec import STRUCTURAL_KEYS, RunSpec, describe_fields, own_keys
from kitchen.engine.ir import ConditionalNode, LoopNode, Node, ParallelNode, StageNode, Workflow
from kitchen.runs.lifecycle import trained_seconds
from kitchen.runs.rundir import RunDir
from kitchen.telemetry.events import RunStatus


def _console() -> Console:
    """Terminal width on a terminal; 140 columns when piped, so tables stay readable in logs."""
    probe = Console()
    return Console(highlight=False, width=None if probe.is_terminal or os.environ.get("COLUMNS") else 140)


console = _console()


def _options(stage: Any) -> str:
    """A dataclass stage's options that differ from their defaults, as ``(tag=before)``."""
    import dataclasses

    if not dataclasses.is_dataclass(stage):
        return ""
    shown = [f"{f.name}={getattr(stage, f.name)}" for f in dataclasses.fields(stage)
             if f.default is not dataclasses.MISSING and getattr(stage, f.name) != f.default and not callable(getattr(stage, f.name))]
    return f" ({', '.join(shown)})" if shown else ""


def _package_of(obj: Any) -> str:
    """The distribution a class or function comes from ('' for kitchen's own)."""
    top = (getattr(obj, "__module__", "") or "").split(".")[0]
    if top in ("kitchen", "", "__main__"):
        return ""
    from importlib.metadata import packages_distributions

    return ", ".join(packages_distributions().get(top, [top]))


def stage_tree(nodes: Iterable[Node], root: Tree, described: set | None = None) -> Tree:
    """The workflow as a tree; each stage's one-line description is shown where it first appears."""
    described = set() if described is None else described
    for node in nodes:
        if isinstance(node, StageNode):
            kind = type(node.stage) if not hasattr(node.stage, "fn") else node.stage.fn
            about = node.stage.description.replace("``", "`") if kind not in described else ""
            if about and _package_of(kind):
                about += f" (from {_package_of(kind)})"
            described.add(kind)
            title = node.title if node.label else node.title + _options(node.stage)
            root.add(f"[cyan]{title}[/]" + (f" [dim]{about}[/]" if about else ""))
        elif isinstance(node, LoopNode):
            stage_tree(node.body, root.add(f"[magenta]loop[/] {node.name}"), described)
        elif isinstance(node, ConditionalNode):
            branch = root.add(f"[yellow]when[/] {node.label}")
            stage_tree(node.then, branch, described)
            if node.otherwise:
                stage_tree(node.otherwise, root.add("[yellow]otherwise[/]"), described)
        elif isinstance(node, ParallelNode):
            par = root.add(f"[green]parallel[/] {node.label} (max {node.max_concurrency})")
            for i, branch in enumerate(node.branches):
                stage_tree(branch, par.add(f"branch {i + 1}"), described)
    return root


def print_plan(spec: RunSpec, workflow: Workflow, data: dict[str, Any]) -> None:
    import yaml
    from rich.syntax import Syntax

    from kitchen.io.secrets import redact

    console.rule(f"run spec: recipe {spec.recipe}")
    console.print(Syntax(yaml.safe_dump(redact(data), sort_keys=False), "yaml", background_color="default"))
    console.rule(f"stage plan: workflow {workflow.name}")
    console.print(stage_tree(workflow.nodes, Tree(f"[bold]{workflow.name}[/]: {workflow.description}")))


def print_plugins() -> None:
    """Every named part by kind, with where it came from (kitchen or an installed package)."""
    from kitchen.config.catalog import KINDS, catalog

    table = Table(title="named parts (use the name in a recipe, or a {_target_: ...} node)")
    for col in ("kind", "name", "from", "target"):
        table.add_column(col, overflow="fold")
    for kind in KINDS:
        for entry in catalog().entries(kind):
            table.add_row(kind[:-1], entry.name, entry.source, entry.target)
    console.print(table)


def print_recipes(found: dict[str, Any]) -> None:
    from kitchen.config.catalog import catalog

    table = Table(title="recipes", show_lines=False)
    for col in ("name", "workflow", "adapters", "from", "description"):
        table.add_column(col, overflow="fold")
    workflows = catalog()
    for name, recipe in sorted(found.items()):
        source = recipe.source if recipe.source != "kitchen" else "kitchen"
        wf_source = workflows.source("workflows", recipe.workflow)
        workflow = recipe.workflow + (f" [dim]({wf_source})[/]" if wf_source not in ("kitchen", "?") else "")
        table.add_row(name, workflow, recipe.adapters, source, recipe.description)
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_describe(recipe: Any, spec: RunSpec, workflow: Workflow, all_keys: bool) -> None:
    console.print(f"[bold]{recipe.name}[/] ({recipe.path}" + (f", from {recipe.source}" if recipe.source != "kitchen" else "") + ")")
    if recipe.description:
        console.print(recipe.description)
    for line in recipe.header:
        console.print(f"[dim]{line}[/]")
    from_where = f" (from {workflow.source})" if workflow.source != "kitchen" else ""
    console.print(f"workflow: [cyan]{workflow.name}[/]{from_where}   adapters: [cyan]{spec.adapters.name}[/]")
    set_by_recipe = {k for k in recipe.body if k != "defaults"}
    shown = set(own_keys(workflow.config)) | set_by_recipe
    table = Table(title=f"hyperparameters of workflow {workflow.name} (override with key=value)")
    for col in ("key", "type", "default", "this recipe", "description"):
        table.add_column(col, overflow="fold")
    hidden = 0
    for name, type_name, default, description in describe_fields(workflow.config):
        if name in STRUCTURAL_KEYS:
            continue
        if not all_keys and name not in shown:
            hidden += 1
            continue
        value = getattr(spec, name)
        mark = "[green]" + _fmt(value) + "[/]" if name in set_by_recipe else _fmt(value)
        table.add_row(name, type_name, _fmt(default), mark, description)
    console.print(table)
    if hidden:
        console.print(f"[dim]{hidden} more keys common to every workflow: kitchen describe {recipe.name} --all[/]")
    console.print(stage_tree(workflow.nodes, Tree(f"[bold]stage tree[/]: {workflow.description}")))


def print_validated(prepared: Any) -> None:
    """The one line `kitchen validate` prints once preflight passed."""
    spec, data = prepared.spec, prepared.ctx
    from kitchen.stages.data import ChatData

    rows = ""
    if data.has(ChatData) and data.use(ChatData).loaded is not None:
        rows = ", " + data.use(ChatData).summary()  # the detected format and row counts
    note = data.record.model_note
    console.print(f"[green]ok[/]: recipe {spec.recipe}, workflow {prepared.workflow.name}, adapters {spec.adapters.name}, "
                  f"model {spec.model}" + (f" ({note})" if note else "") + f"{rows}; would write to {spec.run_dir}")


def _find_runs(roots: Iterable[Path]) -> list[Path]:
    found = []
    for root in roots:
        if (root / "run.json").exists():
            found.append(root)
        elif root.is_dir():  # anywhere below the root (sweep jobs sit two or more levels down)
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
        info = RunDir(path).read_info()
        if not info or info.get("status") == "unknown":  # gone, or not JSON (a torn write): not listed
            continue
        count += 1
        metrics = info.get("final_metrics") or {}
        status = info.get("status", "?")
        if status == RunStatus.RUNNING and not _alive(info.get("pid")):
            status = RunStatus.KILLED  # it never recorded an ending; resume=true continues from its last checkpoint
        color = known.color if (known := RunStatus.of(status)) else "white"
        steps = f"{info.get('step', '-')}/{info.get('total_steps') or '-'}"
        started = info.get("started_at")
        started_s = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if isinstance(started, (int, float)) else "-"
        seconds, attempts = trained_seconds(info)  # every attempt's time, not only the last one's
        duration = _duration(seconds) + (f" ({attempts} attempts)" if attempts > 1 else "")
        table.add_row(str(path), str(info.get("recipe", "-")), f"[{color}]{status}[/]", steps,
                      _fmt(metrics.get("loss")), _fmt(metrics.get("test_nll")), duration, started_s)
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
    """One row per job (records from kitchen.runs.sweeps), best objective first; returns the failure count.

    Sorted by the objective when the sweep has one, with the best job named below.
    """
    from kitchen.runs.sweeps import rank

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
        status = str(rec.get("status") or RunStatus.FAILED)
        if status != RunStatus.COMPLETED:
            failed += 1
        metrics = rec.get("metrics") or {}
        color = RunStatus.COMPLETED.color if status == RunStatus.COMPLETED else RunStatus.FAILED.color
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
