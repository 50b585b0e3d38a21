"""One run, start to finish: spec -> run dir -> adapters -> engine -> status.

This is the seam between the CLI/Hydra edge and the engine. It owns the run's
lifecycle: refusing to clobber a run dir, writing the redacted config and run.json,
wiring the sinks, turning Ctrl-C into a checkpoint, and recording the final status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitchen.config.spec import RunSpec
from kitchen.engine.context import Adapters, Context
from kitchen.engine.runner import Runner, StopRun
from kitchen.errors import BackendError, ConfigError, KitchenError
from kitchen.rundir import RunDir
from kitchen.telemetry import events as ev
from kitchen.telemetry.events import EventBus

EXIT_OK, EXIT_ERROR, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130
VERSIONED_PACKAGES = ("crucible-kitchen", "torch", "transformers", "peft", "hydra-core", "tinker", "datasets")


@dataclass
class RunResult:
    status: str
    run_dir: str
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return {"completed": EXIT_OK, "interrupted": EXIT_INTERRUPTED}.get(self.status, EXIT_ERROR)


def build_adapters(spec: RunSpec) -> Adapters:
    """Instantiate each port's ``_target_``; an import or argument problem is a ConfigError."""

    def make(port: str, node: dict[str, Any]) -> Any:
        from hydra.utils import instantiate

        try:
            return instantiate(node, _convert_="all")
        except KitchenError:
            raise
        except Exception as exc:  # noqa: BLE001
            cause = exc.__cause__ or exc
            if isinstance(cause, KitchenError):
                raise cause from None
            raise ConfigError(
                f"adapters={spec.adapters.name}: could not build the {port} adapter '{node.get('_target_')}': "
                f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
            ) from None

    return Adapters(training=make("training", spec.adapters.training), dataset_store=make("dataset_store", spec.adapters.dataset_store))


def build_bus(spec: RunSpec, run_dir: Path) -> EventBus:
    bus = EventBus()
    if "console" in spec.telemetry.sinks:
        from kitchen.telemetry.console import ConsoleSink

        bus.subscribe(ConsoleSink())
    if "jsonl" in spec.telemetry.sinks:
        from kitchen.telemetry.jsonl import JsonlSink

        bus.subscribe(JsonlSink(run_dir))
    return bus


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_config(rundir: RunDir, data: dict[str, Any]) -> None:
    import yaml

    from kitchen.telemetry.jsonl import redact
    from kitchen.rundir import atomic_write_text

    atomic_write_text(rundir.config, yaml.safe_dump(redact(data), sort_keys=False))


class _GracefulStop:
    """First Ctrl-C: finish the current step, checkpoint, exit 130. Second: stop now."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.previous: Any = None

    def __enter__(self) -> "_GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.ctx.stop_requested:
            raise KeyboardInterrupt
        self.ctx.stop_requested = True
        self.ctx.emit(ev.RUN_WARNING, message="Ctrl-C: finishing the current step and writing a checkpoint (press again to stop at once)")

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def execute(spec: RunSpec) -> RunResult:
    """Run ``spec`` to completion. Raises KitchenError for problems the user can fix."""
    from kitchen.workflows import get_workflow

    workflow = get_workflow(spec.workflow.name)
    from kitchen import distributed as kdist  # --- issue 11: one rank of a torchrun job

    if kdist.is_distributed():
        spec = kdist.join_run(spec)
    rundir = RunDir(Path(spec.run_dir))
    mode = rundir.check_can_start(resume=spec.resume, overwrite=spec.overwrite)
    # With no checkpoint yet, a resume starts from step 0 in the same folder.
    resume_record = rundir.last_checkpoint() if mode == "resume" else None
    previous = rundir.read_info() if mode == "resume" else None
    adapters = build_adapters(spec)  # a missing API key fails here, before any file is written
    ctx = Context(spec=spec, adapters=adapters, bus=EventBus(), run_dir=rundir.path)
    ctx.state["resume_record"] = resume_record
    runner = Runner(workflow)
    runner.validate(ctx)  # bad data fails here too: nothing has been written or moved yet

    kdist.barrier()  # --- issue 11: every rank has read the run dir before rank 0 changes it
    writer = kdist.is_rank0()  # --- issue 11: only rank 0 writes config, run.json, metrics, events
    if writer:
        rundir.path.mkdir(parents=True, exist_ok=True)
    moved = rundir.move_aside() if mode == "overwrite" and writer else None
    bus = ctx.bus = build_bus(spec, rundir.path) if writer else EventBus()
    if moved is not None:
        ctx.emit(ev.RUN_INFO, message=f"the previous run was moved to {moved}")
    if writer:
        write_config(rundir, spec.model_dump(mode="json"))  # the complete validated spec, defaults included
    started = time.time()
    info: dict[str, Any] = dict(previous or {})
    info.update(
        status="running",
        recipe=spec.recipe,
        workflow=spec.workflow.name,
        adapters=spec.adapters.name,
        model=spec.model,
        seed=spec.seed,
        run_dir=str(rundir.path),
        started_at=info.get("started_at", started),
        resumed_at=started if mode == "resume" else None,
        ended_at=None,
        git_sha=_git_sha(),
        versions=_versions(),
        argv=[a for a in sys.argv[1:] if "key" not in a.lower() and "token" not in a.lower()],
        pid=os.getpid(),
    )
    rundir.write_info(info)
    ctx.emit(
        ev.WORKFLOW_START, workflow=workflow.name, recipe=spec.recipe, run_dir=str(rundir.path),
        model=spec.model, backend=spec.adapters.name, resumed_from_step=(resume_record or {}).get("step", 0),
    )
    status, error, raised = "failed", None, None
    try:
        with _GracefulStop(ctx):
            try:
                runner.run(ctx)
                status = "completed"
            except (StopRun, KeyboardInterrupt):
                status = "interrupted"
                if ctx.step > 0:
                    from kitchen.stages.persist import save_checkpoint

                    save_checkpoint(ctx)
    except KitchenError as exc:
        error, raised = exc.render(), exc
        ctx.emit(ev.WORKFLOW_EXCEPTION, error=error, type=type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised for a traceback
        error, raised = f"{type(exc).__name__}: {exc}", exc
        ctx.emit(ev.WORKFLOW_EXCEPTION, error=error, type=type(exc).__name__)
    finally:
        ended = time.time()
        final = {k: v for k, v in ctx.metrics.items() if isinstance(v, (int, float))}
        info.update(status=status, ended_at=ended, duration_s=ended - started, step=ctx.step,
                    total_steps=ctx.state.get("total_steps"), final_metrics=final, error=error,
                    data_stats={k: v.to_dict() for k, v in ctx.metadata.items() if k.endswith("_data_stats") and hasattr(v, "to_dict")})
        rundir.write_info(info)
        ctx.emit(ev.WORKFLOW_STOP, status=status, step=ctx.step, duration_s=ended - started, final_metrics=final, run_dir=str(rundir.path))
        bus.close()
        try:
            adapters.training.close()
        except Exception:  # noqa: BLE001
            pass
    if raised is not None:
        raise raised
    return RunResult(status=status, run_dir=str(rundir.path), step=ctx.step, metrics=final)


def spec_from_config(cfg: Any) -> tuple[RunSpec, dict[str, Any]]:
    from kitchen.config.compose import describe_source, to_container

    data = to_container(cfg) if not isinstance(cfg, dict) else cfg
    return RunSpec.from_config(data, source=describe_source(data.get("recipe"))), data


def hydra_task(cfg: Any) -> dict[str, Any]:
    """The task function Hydra calls for ``kitchen run`` (single run)."""
    try:
        spec, _ = spec_from_config(cfg)
        if spec.distributed.nproc_per_node > 1:  # --- issue 11: start the ranks through torch.distributed.run
            from kitchen import distributed as kdist

            if not kdist.under_launcher():
                return kdist.launch_run(spec)
        return vars(execute(spec))
    except KitchenError as exc:  # handed back to the CLI, which prints it as one paragraph
        return {"status": "failed", "user_error": exc}


def hydra_sweep_task(cfg: Any) -> dict[str, Any]:
    """The task function for each multirun job: never raises, so one failure can't stop the sweep."""
    from hydra.core.hydra_config import HydraConfig

    from kitchen.config.compose import register_resolvers

    register_resolvers()  # a launcher may run this job in a fresh process (joblib, submitit)
    run_dir = None
    try:
        run_dir = HydraConfig.get().runtime.output_dir
        from kitchen.config.compose import to_container

        data = to_container(cfg)
        data["run_dir"] = run_dir
        spec, _ = spec_from_config(data)
        if spec.distributed.nproc_per_node > 1:  # --- issue 11: this sweep job runs on several ranks
            from kitchen import distributed as kdist

            if not kdist.under_launcher():
                return kdist.launch_run(spec, ["run", *HydraConfig.get().overrides.task])
        return vars(execute(spec))
    except KitchenError as exc:
        return {"status": "failed", "run_dir": run_dir, "error": exc.render(), "metrics": {}}
    except Exception as exc:  # noqa: BLE001
        import traceback

        return {"status": "failed", "run_dir": run_dir, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(), "metrics": {}}


__all__ = ["BackendError", "RunResult", "execute", "hydra_sweep_task", "hydra_task"]
