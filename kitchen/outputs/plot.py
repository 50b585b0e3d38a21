"""`kitchen plot`: training and evaluation curves from metrics.jsonl, one line per run.

Each argument is a run dir (it holds metrics.jsonl) or any folder above run dirs, such
as a sweep dir; every run found below it is drawn. When several runs come from one
sweep (or simply differ in config), each line is labelled by the config keys whose values
differ between them (``learning_rate=0.001 lora_rank=8``), read from each run's
config.yaml; otherwise by the run dir's name.

* ``--out FILE.png``: a PNG drawn by matplotlib with the headless Agg backend, one panel
  per metric (the ``[plot]`` extra).
* no ``--out``: a quick character-grid chart in the terminal (built in, no dependency),
  one marker per run, with each run's first and last value.

Metrics default to ``loss`` plus every evaluation metric the runs logged; ``--metrics``
picks (``loss,test_nll``). Training rows are the ``training.step`` rows of metrics.jsonl;
evaluation rows are those with a ``split``. A resumed run re-logs steps after its
checkpoint: the last value per step wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from kitchen.errors import ConfigError, RunDirError, did_you_mean
from kitchen.io.atomic import atomic_path

_BOOKKEEPING = ("step", "split", "epoch", "total_steps", "elapsed_s")


@dataclass
class RunCurves:
    path: Path
    label: str = ""
    series: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> {step: value}
    eval_metrics: set[str] = field(default_factory=set)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / "metrics.jsonl").is_file():
            found.append(path)
        elif path.is_dir():
            below = sorted({p.parent for p in path.rglob("metrics.jsonl") if "checkpoints" not in p.parts})
            if not below:
                raise RunDirError(f"{path} holds no metrics.jsonl, neither itself nor below it. "
                                  "Pass a run dir (written by `kitchen run` with the jsonl sink) or a sweep dir.")
            found.extend(below)
        else:
            raise RunDirError(f"{path} does not exist. Pass a run dir or a sweep dir written by `kitchen run`.")
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def load(run: Path) -> RunCurves:
    from kitchen.telemetry.metrics_store import read_metrics

    curves = RunCurves(run)
    for row in read_metrics(run / "metrics.jsonl"):
        step = row.get("step")
        if not isinstance(step, int):
            continue
        is_eval = row.get("split") is not None
        for key, value in row.items():
            if key in _BOOKKEEPING or ":" in key or not _is_num(value):
                continue
            curves.series.setdefault(key, {})[step] = float(value)
            if is_eval:
                curves.eval_metrics.add(key)
    return curves


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = config
    return out


def label_runs(runs: list[RunCurves]) -> None:
    """Label each run by the config values that differ between the runs (the swept keys)."""
    import yaml

    configs = []
    for run in runs:
        try:
            configs.append(_flat(yaml.safe_load((run.path / "config.yaml").read_text()) or {}))
        except (OSError, yaml.YAMLError):
            configs.append({})
    skip = {"run_dir", "resume", "overwrite"}
    keys = sorted({k for c in configs for k in c} - skip)
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1] if len(runs) > 1 else []
    for run, config in zip(runs, configs):
        parts = [f"{k}={config.get(k)}" for k in varying]
        run.label = " ".join(parts) if parts else run.path.name


def choose_metrics(runs: list[RunCurves], wanted: Sequence[str] | None) -> list[str]:
    available = sorted({m for r in runs for m in r.series})
    if wanted:
        for metric in wanted:
            if metric not in available:
                raise ConfigError(f"--metrics: no run logged '{metric}'.{did_you_mean(metric, available)} "
                                  f"The metrics in these runs are: {', '.join(available) or 'none'}.")
        return list(wanted)
    evals = sorted({m for r in runs for m in r.eval_metrics})
    chosen = (["loss"] if "loss" in available else []) + [m for m in evals if m != "loss"]
    return chosen or available[:1]


def check_out(out: Path, force: bool = False) -> Path:
    """``--out`` names exactly the file written: a ``.png``, new unless ``force``.

    matplotlib picks the format from the suffix (a traceback for ``.txt``) and adds ``.png``
    to a bare name (``--out curves`` wrote ``curves.png``, ``--out somedir`` wrote
    ``somedir.png``), so both are refused here, before any run is read.
    """
    if out.suffix.lower() != ".png":
        raise ConfigError(f"kitchen plot --out {out}: the file must end in .png (a PNG is the only image kitchen "
                          "plot writes; without --out the chart is drawn in the terminal).")
    if out.is_dir():
        raise ConfigError(f"kitchen plot --out {out}: that is a directory; name the PNG file to write, "
                          f"e.g. --out {out / 'curves.png'}.")
    if out.exists() and not force:
        raise ConfigError(f"kitchen plot --out {out}: the file exists; pass --force to overwrite it, "
                          "or name another file.")
    return out


def save_png(runs: list[RunCurves], metrics: list[str], out: Path, title: str | None = None) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("kitchen plot --out needs matplotlib, which is not installed. "
                          "Install it with: pip install 'crucible-kitchen[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for run in runs:
            points = sorted(run.series.get(metric, {}).items())
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 12 else None, markersize=3, linewidth=1.4, label=run.label)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


_MARKERS = "•×+o*#@%"


def terminal_text(runs: list[RunCurves], metrics: list[str], width: int = 100, height: int = 14) -> str:
    """A character-grid line chart per metric: one marker per run, y range on the left, steps below.

    Built in (no plotting dependency): plotext's API changed incompatibly in 6.x, and a
    grid of characters is all a quick look in a terminal or a CI log needs.
    """
    blocks = []
    for metric in metrics:
        series = [(run, sorted(run.series.get(metric, {}).items())) for run in runs]
        series = [(run, pts) for run, pts in series if pts]
        if not series:
            continue
        xs = [x for _, pts in series for x, _ in pts]
        ys = [y for _, pts in series for _, y in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        yspan, xspan = (y1 - y0) or 1.0, (x1 - x0) or 1
        left = max(len(f"{y1:.4g}"), len(f"{y0:.4g}")) + 1
        cols = max(20, width - left - 2)
        grid = [[" "] * cols for _ in range(height)]
        for i, (_, pts) in enumerate(series):
            mark = _MARKERS[i % len(_MARKERS)]
            for x, y in pts:
                c = int(round((x - x0) / xspan * (cols - 1)))
                r = height - 1 - int(round((y - y0) / yspan * (height - 1)))
                grid[r][c] = mark
        lines = [metric]
        for r, row in enumerate(grid):
            tick = f"{y1:.4g}" if r == 0 else f"{y0:.4g}" if r == height - 1 else ""
            lines.append(f"{tick:>{left}}┤{''.join(row)}")
        lines.append(" " * left + "└" + "─" * cols)
        first, last = f"step {x0}", f"step {x1}"
        lines.append(" " * (left + 1) + first + last.rjust(cols - len(first)))
        for i, (run, pts) in enumerate(series):
            lines.append(f"  {_MARKERS[i % len(_MARKERS)]} {run.label}: {pts[0][1]:.4g} → {pts[-1][1]:.4g}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot(paths: Sequence[str | Path], metrics: Sequence[str] | None = None, out: str | Path | None = None,
         width: int | None = None, force: bool = False) -> str:
    """Draw the runs under ``paths``; returns the PNG path or the terminal text."""
    if out is not None:
        out = check_out(Path(out), force)
    runs = [load(p) for p in find_runs(paths)]
    if not any(r.series for r in runs):
        raise RunDirError("the metrics.jsonl files here hold no numbers yet: " + ", ".join(str(r.path) for r in runs))
    label_runs(runs)
    chosen = choose_metrics(runs, metrics)
    if out is not None:
        return str(save_png(runs, chosen, out))
    import shutil

    return terminal_text(runs, chosen, width or min(120, shutil.get_terminal_size((100, 24)).columns))


__all__ = ["choose_metrics", "find_runs", "label_runs", "load", "plot", "save_png", "terminal_text"]
