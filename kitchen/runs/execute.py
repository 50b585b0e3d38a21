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
from kitchen.runs.preflight import Prepared, preflight
from kitchen.runs.rundir import RunDir
from kitchen.telemetry import events as ev
from kitchen.telemetry.events import EventBus

EXIT_OK, EXIT_ERROR, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130
_STOP_SIGNALS = ("SIGINT", "SIGTERM")  # SIGTERM (schedulers, docker stop) = first Ctrl-C
VERSIONED_PACKAGES = ("crucible-kitchen", "torch", "transformers", "peft", "hydra-core", "tinker", "datasets")


@dataclass
class RunResult:
    status: ev.RunStatus
    run_dir: str
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    signum: int | None = None  # the signal that interrupted the run (exit 128 + signum)

    @property
    def exit_code(self) -> int:
        if self.status == ev.RunStatus.INTERRUPTED and self.signum:
            return 128 + self.signum
        return {ev.RunStatus.COMPLETED: EXIT_OK, ev.RunStatus.INTERRUPTED: EXIT_INTERRUPTED}.get(self.status, EXIT_ERROR)


def build_training(spec: RunSpec) -> Any:
    """The training adapter (``adapters.training._target_``); a problem is a ConfigError naming it."""
    from kitchen.config.instantiate import build

    try:
        return build("adapters", dict(spec.adapters.training))
    except ConfigError as exc:
        raise ConfigError(f"adapters={spec.adapters.name}: {exc.render()}") from None


def build_bus(spec: RunSpec, run_dir: Path, sink_run: Any = None) -> EventBus:
    """Every sink of ``telemetry.sinks`` (a short name or a ``_target_``), built the one way."""
    from kitchen.telemetry.sinks import SinkContext, build_sinks

    bus = EventBus()
    run = sink_run if sink_run is not None else SinkContext(run_dir=run_dir)
    for sink in build_sinks(spec.telemetry.sinks, run):
        bus.subscribe(sink)
    from kitchen.telemetry.sdk_logs import SdkLogRouter

    bus.subscribe(SdkLogRouter(run_dir))  # SDK retry chatter to RUN_DIR/debug.log, not through the bar
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

    from kitchen.io.atomic import atomic_write_text
    from kitchen.io.secrets import redact

    atomic_write_text(rundir.config, yaml.safe_dump(redact(data), sort_keys=False))


class _GracefulStop:
    """First Ctrl-C or SIGTERM: finish the current step, checkpoint, exit 128 + signal
    (130 / 143). Second: stop now."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.previous: dict[int, Any] = {}
        self.signum: int | None = None

    def __enter__(self) -> "_GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for name in _STOP_SIGNALS:
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.ctx.stop_requested:
            raise KeyboardInterrupt
        self.ctx.stop_requested = True
        self.signum = signum
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        again = "press again" if signum == signal.SIGINT else "send it again"
        self.ctx.emit(ev.RUN_WARNING, message=f"{what}: finishing the current step and writing a checkpoint ({again} to stop at once)")

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self.previous.items():
            if previous is not None:
                signal.signal(sig, previous)


def execute(spec: RunSpec) -> RunResult:
    """Preflight ``spec``, then run it to completion. Raises KitchenError for problems the user can fix."""
    from kitchen.workflows import get_workflow

    return execute_prepared(preflight(spec, get_workflow(spec.workflow.name)))


def execute_prepared(prepared: "Prepared") -> RunResult:
    """Run a spec that passed preflight. Nothing is written until the training adapter is built."""
    from kitchen.runs import lifecycle  # lock, leftovers, attempts, disk full, resume_from

    spec, workflow, ctx = prepared.spec, prepared.workflow, prepared.ctx
    rundir = RunDir(Path(spec.run_dir))
    resume = spec.resume or spec.resume_from is not None  # resume_from implies resume
    adapters = ctx.adapters
    adapters.training = build_training(spec)  # a backend that refuses the job fails here, before any file is written
    runner = Runner(workflow)

    from kitchen.runs import distributed as kdist

    kdist.barrier()  # under torchrun: every rank has read the run dir before rank 0 changes it
    writer = kdist.is_rank0()  # only rank 0 locks and writes the run dir (config, run.json, metrics, events)
    # one live run per folder; decide again under the lock
    lock = lifecycle.lock_run_dir(rundir, resume=resume) if writer else lifecycle.NO_LOCK
    try:
        mode = rundir.check_can_start(resume=resume, overwrite=spec.overwrite) if writer else prepared.mode
        moved = None
        if mode == "overwrite" and writer:
            moved = rundir.move_aside()
            lock.release()
            lock = lifecycle.lock_run_dir(rundir, resume=False)
        # with no checkpoint yet, a resume starts from step 0 in the same folder
        resume_record = lifecycle.resume_record(rundir, spec.resume_from) if mode == "resume" else None
        ctx.progress.resume_from = resume_record
        previous = rundir.read_info() if mode == "resume" else None
        return _execute_locked(spec, workflow, rundir, ctx, adapters, runner, mode, moved, resume_record, previous)
    finally:
        lock.release()


def _execute_locked(spec: RunSpec, workflow: Any, rundir: RunDir, ctx: Context, adapters: Adapters, runner: Runner,
                    mode: str, moved: Path | None, resume_record: dict[str, Any] | None,
                    previous: dict[str, Any] | None) -> RunResult:
    """The run itself, while this process holds the run-dir lock."""
    from kitchen.io.secrets import redact
    from kitchen.runs import lifecycle
    from kitchen.telemetry.sinks import SinkContext

    git_sha = _git_sha()
    sink_run = SinkContext(  # what every sink's constructor gets as run=
        run_dir=rundir.path, config=redact(spec.model_dump(mode="json")), recipe=spec.recipe, workflow=spec.workflow.name,
        backend=spec.adapters.name, model=spec.model, resume=mode == "resume", previous_info=previous, git_sha=git_sha,
    )
    from kitchen.runs import distributed as kdist

    writer = kdist.is_rank0()
    bus = ctx.bus = build_bus(spec, rundir.path, sink_run) if writer else EventBus()
    if moved is not None:
        ctx.emit(ev.RUN_INFO, message=f"the previous run was moved to {moved}")
    if writer:
        lifecycle.report_leftovers(ctx, rundir)  # temp files of killed writes
        try:
            write_config(rundir, spec.model_dump(mode="json"))  # the complete validated spec, defaults included
        except OSError as exc:
            bus.close()
            raise lifecycle.as_user_error(exc, rundir) from None
    started = time.time()
    info: dict[str, Any] = dict(previous or {})
    attempt = lifecycle.start_attempt(info, mode=mode, started=started, resume_record=resume_record)
    info.update(
        status=ev.RunStatus.RUNNING,
        recipe=spec.recipe,
        workflow=spec.workflow.name,
        adapters=spec.adapters.name,
        model=spec.model,
        seed=spec.seed,
        run_dir=str(rundir.path),
        started_at=info.get("started_at", started),
        resumed_at=started if mode == "resume" else None,
        ended_at=None,
        git_sha=git_sha,
        versions=_versions(),
        argv=lifecycle.redacted_argv(),  # hide secret-looking keys, keep max_tokens=...
        pid=os.getpid(),
    )
    info["trackers"] = sink_run.trackers  # tracker run ids, so a resume continues the same tracker run
    try:
        rundir.write_info(info)
    except OSError as exc:
        bus.close()
        raise lifecycle.as_user_error(exc, rundir) from None
    status, error, raised = ev.RunStatus.FAILED, None, None
    stopper = _GracefulStop(ctx)
    try:
        with stopper:
            try:
                ctx.emit(  # inside the try, so a full disk here is reported like any other
                    ev.WORKFLOW_START, workflow=workflow.name, recipe=spec.recipe, run_dir=str(rundir.path),
                    model=spec.model, backend=spec.adapters.name, resumed_from_step=(resume_record or {}).get("step", 0),
                )
                runner.run(ctx)
                status = ev.RunStatus.COMPLETED
            except (StopRun, KeyboardInterrupt):
                status = ev.RunStatus.INTERRUPTED
                if ctx.step > 0:
                    from kitchen.stages.checkpoint import save_checkpoint

                    save_checkpoint(ctx)
    except KitchenError as exc:
        error, raised = exc.render(), exc
        lifecycle.quiet(lambda: ctx.emit(ev.WORKFLOW_EXCEPTION, error=error, type=type(raised).__name__))
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised for a traceback
        if lifecycle.is_disk_full(exc):  # a full disk is one paragraph, exit 2
            exc = lifecycle.as_user_error(exc, rundir)
            error, raised = exc.render(), exc
        else:
            error, raised = f"{type(exc).__name__}: {exc}", exc
        lifecycle.quiet(lambda: ctx.emit(ev.WORKFLOW_EXCEPTION, error=error, type=type(raised).__name__))
    finally:
        ended = time.time()
        final = {k: v for k, v in ctx.metrics.items() if isinstance(v, (int, float))}
        info.update(status=status, ended_at=ended, duration_s=ended - started, step=ctx.step,
                    total_steps=ctx.progress.total_steps, final_metrics=final, error=error,
                    **ctx.record.run_json_fields())
        # record this attempt; a failed one never rewrites an earlier completed record,
        # and a run.json that does not fit on a full disk keeps its previous contents.
        if not lifecycle.finish_attempt(rundir, info, attempt, previous) and raised is not None:
            raised = lifecycle.note_unwritten_info(raised, rundir)
        _mirror_run_json(ctx, rundir)
        lifecycle.quiet(lambda: ctx.emit(ev.WORKFLOW_STOP, status=status, step=ctx.step, duration_s=ended - started,
                                         final_metrics=final, run_dir=str(rundir.path)))
        trackers_before = dict(sink_run.trackers)
        lifecycle.quiet(bus.close)
        if sink_run.trackers != trackers_before:  # tracker ids remembered while the sinks closed
            lifecycle.quiet(lambda: lifecycle.finish_attempt(rundir, info, attempt, previous))
        try:
            adapters.training.close()
        except Exception:  # noqa: BLE001
            pass
    if raised is not None:
        raise raised
    return RunResult(status=status, run_dir=str(rundir.path), step=ctx.step, metrics=final, signum=stopper.signum)


def _mirror_run_json(ctx: Context, rundir: RunDir) -> None:
    """``checkpoint_mirror`` gets config.yaml and this attempt's run.json, so the mirror is a whole run dir.

    A failure here is a warning: the run's own result is already recorded locally, and an
    error raised while another is being reported would hide that one.
    """
    from kitchen.runs import lifecycle
    from kitchen.stages.checkpoint import mirror

    try:
        mirror(ctx, rundir.config, rundir.run_json)
    except Exception as exc:  # noqa: BLE001 - reported as a warning, the run's outcome stands
        message = f"checkpoint_mirror: run.json was not copied ({exc})"
        lifecycle.quiet(lambda: ctx.emit(ev.RUN_WARNING, message=message))


__all__ = ["BackendError", "RunResult", "execute", "execute_prepared"]
