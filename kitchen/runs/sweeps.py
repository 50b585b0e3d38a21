"""Sweeps that optimise: the multirun job function, the objective, and the job records.

``kitchen run -m ... objective=test_nll objective_mode=min`` makes every job return that
metric's final value as a float, which is what Hydra's Optuna sweeper (and any other
optimising sweeper) needs. A job that fails returns ``None``; Optuna records the trial as
failed and the sweep goes on. Without an objective a job returns its result dict, as
before.

Whatever the launcher (basic, joblib, submitit_local...) and the sweeper, the CLI needs
every job's outcome for the summary table, but an optimising sweeper keeps the job returns
to itself. So each job also appends one JSON line (job number, overrides, status, run
dir, metrics, objective, error) to the file named by ``KITCHEN_SWEEP_LOG``, which the CLI
sets before launching and reads afterwards. Lines are written with one ``O_APPEND`` write,
so parallel jobs never interleave.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from kitchen.telemetry.events import RunStatus
from kitchen.telemetry.sinks import SWEEP_JOB_ENV  # the console prefixes its lines with the job number

SWEEP_LOG_ENV = "KITCHEN_SWEEP_LOG"
SWEEP_RECIPES_ENV = "KITCHEN_SWEEP_RECIPES_DIRS"  # the sweep's --recipes-dir options, for jobs relaunched on N ranks


def final_metric(result_metrics: dict[str, Any], run_dir: str | None, name: str) -> float | None:
    """The final value of ``name``: the run's final metrics, else its last row in metrics.jsonl."""
    value = result_metrics.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not run_dir:
        return None
    from kitchen.telemetry.metrics_store import read_metrics

    last = None
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        for row in read_metrics(path):
            v = row.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                last = float(v)
    return last


def _append(record: dict[str, Any]) -> None:
    target = os.environ.get(SWEEP_LOG_ENV)
    if not target:
        return
    from kitchen.io.jsonl import dumps

    line = (dumps(record) + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    records = []
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return sorted(records, key=lambda r: (r.get("job") if isinstance(r.get("job"), int) else 1 << 30))


def sweep_task(cfg: Any) -> Any:
    """The task function for each multirun job: never raises, so one failure can't stop the sweep."""
    from hydra.core.hydra_config import HydraConfig

    from kitchen.config.compose import register_resolvers, to_container
    from kitchen.errors import KitchenError
    from kitchen.runs import distributed
    from kitchen.runs.execute import execute
    from kitchen.runs.preflight import build_spec

    register_resolvers()  # a launcher may run this job in a fresh process (joblib, submitit)
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    job = hc.job.num
    objective = cfg.get("objective") if hasattr(cfg, "get") else None
    mode = (cfg.get("objective_mode") if hasattr(cfg, "get") else None) or "min"
    record: dict[str, Any] = {"job": job, "overrides": list(hc.overrides.task), "run_dir": run_dir,
                              "status": RunStatus.FAILED, "step": None, "metrics": {}, "objective": None, "error": None}
    os.environ[SWEEP_JOB_ENV] = str(job)
    try:
        data = to_container(cfg)
        from kitchen.config.data_follow import follow_dataset

        follow_dataset(record["overrides"], data)  # as compose_spec does (its note was shown in preflight)
        data["run_dir"] = run_dir
        spec, _ = build_spec(data)
        objective, mode = spec.objective, spec.objective_mode
        if spec.distributed.nproc_per_node > 1 and not distributed.under_launcher():
            record.update(_run_on_ranks(spec, record["overrides"]))
        else:
            result = execute(spec)
            record.update(status=result.status, step=result.step, metrics=result.metrics, error=result.error)
    except KitchenError as exc:
        record["error"] = exc.render()
    except Exception as exc:  # noqa: BLE001
        import traceback

        record.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    finally:
        os.environ.pop(SWEEP_JOB_ENV, None)
    if objective:
        value = final_metric(record["metrics"], run_dir, objective) if record["status"] == RunStatus.COMPLETED else None
        if value is not None and math.isnan(value):
            value = None
        if value is None and record["status"] == RunStatus.COMPLETED:
            record["status"] = RunStatus.FAILED
            record["error"] = (f"objective={objective} is not a metric of this run; its final metrics are: "
                               f"{', '.join(sorted(record['metrics'])) or 'none'}.")
        record.update(objective=value, objective_name=objective, objective_mode=mode)
        _append(record)
        return value  # a float for the sweeper; None marks the trial failed
    _append(record)
    return record


def _run_on_ranks(spec: Any, overrides: list[str]) -> dict[str, Any]:
    """One sweep job with ``distributed.nproc_per_node=N``: ``kitchen run <its overrides>`` on N ranks.

    The job runs through torch's launcher exactly as a single ``kitchen run`` would (each
    rank composes the same config from the same overrides, in the job's own run dir); the
    job's outcome is what rank 0 recorded in run.json.
    """
    from kitchen.runs import distributed

    dirs = [d for d in os.environ.get(SWEEP_RECIPES_ENV, "").split(os.pathsep) if d]
    argv = ["run", *(a for d in dirs for a in ("--recipes-dir", d)), *overrides]
    from kitchen.runs.rundir import RunDir

    out = distributed.launch_run(spec, argv)
    info = RunDir(Path(spec.run_dir)).read_info() or {}
    error = info.get("error")
    if out["status"] != RunStatus.COMPLETED and not error:
        error = f"the job's ranks exited with code {out['exit_code']} (their errors are on the console above)"
    return {"status": out["status"], "step": info.get("step", 0), "metrics": dict(info.get("final_metrics") or {}),
            "error": error}


def sweep_overrides(overrides: list[str]) -> list[str]:
    """Let ``objective_mode=max`` set the Optuna sweeper's direction unless the user set it."""
    values = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("+", "~")))
    if values.get("hydra/sweeper") == "optuna" and "hydra.sweeper.direction" not in values:
        mode = values.get("objective_mode", "min")
        return [*overrides, f"hydra.sweeper.direction={'maximize' if mode == 'max' else 'minimize'}"]
    return list(overrides)


def rank(records: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Completed jobs with an objective first, best first; then the rest by job number."""
    scored = [r for r in records if isinstance(r.get("objective"), (int, float))]
    rest = [r for r in records if not isinstance(r.get("objective"), (int, float))]
    scored.sort(key=lambda r: r["objective"], reverse=(mode == "max"))
    return scored + rest


__all__ = ["SWEEP_JOB_ENV", "SWEEP_LOG_ENV", "SWEEP_RECIPES_ENV", "final_metric", "rank", "read_records", "sweep_overrides", "sweep_task"]
