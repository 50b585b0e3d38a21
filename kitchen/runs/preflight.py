"""One preflight for ``run``, ``validate``, ``resume``, sweeps and the Python facade.

It builds the run spec the one way (compose -> the workflow's own schema) and then
runs every stage's ``validate`` over a context that has the dataset store but no
training backend: data files are parsed with the real row checks, env, renderer,
evaluator and sink names are resolved, credentials are checked as the backend would
check them, and the model is resolved without loading weights. ``kitchen validate``
prints "ok" only when all of that passed, and a run that fails here has written
nothing: no run directory, no Hydra output directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from kitchen.config.spec import RunSpec
from kitchen.engine.context import Adapters, Context
from kitchen.engine.ir import Workflow
from kitchen.telemetry.events import EventBus


@dataclass
class Prepared:
    """A spec that passed preflight, and the context its validation filled (the loaded data)."""

    spec: RunSpec
    workflow: Workflow
    ctx: Context
    mode: str  # "fresh", "resume" or "overwrite"


def build_spec(data: dict[str, Any], source: str | None = None) -> tuple[RunSpec, Workflow]:
    """Validate a composed config dict into its workflow's schema."""
    from kitchen.config.compose import _FOUND, describe_source, key_owners_message
    from kitchen.errors import ConfigError
    from kitchen.workflows import get_workflow

    workflow_node = data.get("workflow")
    name = workflow_node.get("name") if isinstance(workflow_node, dict) else None
    if not isinstance(name, str):
        raise ConfigError(f"Invalid run config ({source or 'the composed config'}): 'workflow.name' is required but not set.")
    workflow = get_workflow(name)
    where = source or describe_source(data.get("recipe"))
    spec = workflow.config.from_config(
        data, source=where, elsewhere=lambda key: key_owners_message(key, workflow.name, _FOUND, "in the config"),
    )
    return spec, workflow


def compose_spec(overrides: list[str], recipe_dirs: Iterable[str] = ()) -> tuple[RunSpec, Workflow, dict[str, Any], dict]:
    """Compose with Hydra (recipes, groups, overrides) and build the spec; nothing runs."""
    from kitchen.config.compose import compose, setup, to_container, warn_broken_workflows

    found = setup(recipe_dirs)
    data = to_container(compose(overrides, found=found))
    from kitchen.config.data_follow import follow_dataset, remember

    remember(follow_dataset(overrides, data))  # dataset= without test_dataset=: not the recipe's test set
    spec, workflow = build_spec(data)
    warn_broken_workflows(workflow.name)
    return spec, workflow, data, found


def preflight(spec: RunSpec, workflow: Workflow, check_run_dir: bool = True) -> Prepared:
    """Everything that can fail before a run touches the disk or loads weights."""
    from kitchen.config.instantiate import build, target_of
    from kitchen.engine.runner import Runner
    from kitchen.errors import ConfigError
    from kitchen.runs import lifecycle
    from kitchen.runs.rundir import RunDir

    rundir = RunDir(Path(spec.run_dir))
    resume = spec.resume or spec.resume_from is not None  # resume_from implies resume
    mode = "fresh"
    if check_run_dir:
        lifecycle.check_run_dir_path(rundir.path)
        mode = rundir.check_can_start(resume=resume, overwrite=spec.overwrite)
    from kitchen.runs.option_checks import check_run_options

    check_run_options(spec)  # a mirror backend, the hub for push_to_hub, the batch split over ranks
    from kitchen.telemetry.sinks import resolve_sinks

    resolve_sinks(spec.telemetry.sinks)  # unknown names and missing tracker extras, without importing SDKs
    target_of("adapters", dict(spec.adapters.training))  # refuses a forbidden _target_ without importing it
    store = build("adapters", dict(spec.adapters.dataset_store))
    if not callable(getattr(store, "load", None)):
        raise ConfigError(f"adapters={spec.adapters.name}: the dataset_store _target_ '{spec.adapters.dataset_store['_target_']}' "
                          f"built a {type(store).__name__}, which has no load(source) method (the DatasetStore port).")
    ctx = Context(spec=spec, adapters=Adapters(training=None, dataset_store=store), bus=EventBus(), run_dir=rundir.path)  # type: ignore[arg-type]
    ctx.progress.resume_from = lifecycle.resume_record(rundir, spec.resume_from) if mode == "resume" else None
    if mode == "resume":
        from kitchen.runs.resume_fit import check_resume_fits

        check_resume_fits(rundir, spec, ctx.progress.resume_from)  # shape keys and max_steps, before weights load
    Runner(workflow).validate(ctx)
    from kitchen.config.data_follow import announce

    announce()  # "the recipe's test set is not used", once everything passed
    return Prepared(spec, workflow, ctx, mode)
