"""Human-facing telemetry: a live Rich progress bar on a terminal, plain lines otherwise.

``ConsoleSink(console=None, live=None)``

* **live** (``live=True``, or ``None`` and the console is an interactive terminal): a Rich
  progress bar (step/total, loss, lr, tokens/s, ETA, extra metrics such as reward_mean)
  updated from ``training.step`` at most ~10 times a second; eval results, checkpoints,
  sampled completions (before/after in a panel), info and warnings are printed above it;
  ``workflow.stop`` stops the bar and prints a summary table.
* **plain** (pipes, CI logs, ``live=False``): single lines such as
  ``step 12/100 loss 1.234 lr 3.0e-04 tok/s 151 eta 0:01:40``, printed for the first and
  last step and otherwise only when ``every`` steps (default: total/20) or ``interval_s``
  seconds (default 2) have passed since the last printed line; plain lines for eval,
  checkpoints, samples and warnings; a plain summary at the end.

Per-event cost is kept tiny: unknown/high-frequency events (``stage.*``) return after one
dict lookup, and a ``training.step`` that is not printed costs a few comparisons and a
``time.monotonic()`` call - no formatting. ``rollout`` samples (one per RL step, possibly
many) are shown at most once every ``sample_interval_s`` seconds.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from kitchen.telemetry.events import (
    EVAL_RESULT,
    EVAL_START,
    EVAL_STOP,
    RUN_INFO,
    RUN_WARNING,
    SAMPLE,
    STAGE_EXCEPTION,
    STAGE_START,
    STAGE_STOP,
    TRAINING_CHECKPOINT,
    TRAINING_STEP,
    WORKFLOW_EXCEPTION,
    WORKFLOW_START,
    WORKFLOW_STOP,
    Event,
    RunStatus,
)

# training.step keys that have their own column; any other numeric key is an "extra" metric.
_STEP_KEYS = frozenset({"step", "total_steps", "epoch", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s"})
_MAX_EXTRAS = 4
# Backend bookkeeping (token/sequence counts, "loss:sum"-style keys) stays in metrics.jsonl only.
_BOOKKEEPING = ("num_", "time/", "input_tokens")
_LIVE_UPDATE_S = 0.1  # at most ~10 progress updates per second
_BAR_WIDTH = 20
_DESC_WIDTH = 32


# -------------------------------------------------------------------------- formatting


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    item = getattr(v, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            x = item()
        except Exception:  # noqa: BLE001
            return None
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
    return None


def fmt_num(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "-" if v is None else str(v)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e6 and not isinstance(v, float):
        return str(int(x))
    return f"{x:.4g}"


def fmt_lr(v: Any) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:.1e}"


def fmt_duration(seconds: Any) -> str:
    x = _num(seconds)
    if x is None or not math.isfinite(x) or x < 0:
        return "-:--:--"
    total = int(round(x))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _shorten(text: Any, limit: int) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _one_line(text: Any, limit: int) -> str:
    return _shorten(str(text if text is not None else "").replace("\r", "").replace("\n", "⏎ "), limit)


class ConsoleSink:
    """Progress and results for people; see the module docstring."""

    def __init__(
        self,
        console: Console | None = None,
        live: bool | None = None,
        *,
        every: int | None = None,
        interval_s: float = 2.0,
        sample_interval_s: float = 10.0,
        prefix: str = "",
    ) -> None:
        self.console = console if console is not None else Console()
        self.prefix = prefix  # "[job 3] " in a parallel sweep
        if live is None:
            live = self.console.is_terminal and not self.console.is_dumb_terminal
        self.live = bool(live)
        self.every = every
        self.interval_s = interval_s
        self.sample_interval_s = sample_interval_s

        # run state
        self._workflow = "train"
        self._run_dir: str | None = None
        self._total: int | None = None
        self._resumed_from = 0
        self._t0 = time.monotonic()
        self._last: Mapping[str, Any] | None = None  # last training.step payload
        self._eta_base: tuple[float, float] | None = None  # (step, elapsed) at the first step: warm-up excluded
        self._stage: str | None = None  # the top-level stage running now (evaluate, save_weights...)
        self._first_loss: Any = None
        self._evals_first: dict[str, Any] = {}
        self._evals_last: dict[str, Any] = {}
        self._evals_seen: dict[str, int] = {}
        self._error: str | None = None
        self._summarised = False
        self._closed = False

        # throttling
        self._every_n = every or 50
        self._printed_step: int | None = None
        self._printed_at = 0.0
        self._seen_step = False
        self._sample_at = -math.inf

        # live mode
        self._progress: Progress | None = None
        self._task: Any = None
        self._updated_at = 0.0
        self._pending = False  # a step arrived since the last progress update

        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            TRAINING_STEP: self._on_step,
            WORKFLOW_START: self._on_start,
            WORKFLOW_STOP: self._on_stop,
            WORKFLOW_EXCEPTION: self._on_exception,
            STAGE_EXCEPTION: self._on_stage_exception,
            TRAINING_CHECKPOINT: self._on_checkpoint,
            EVAL_RESULT: self._on_eval,
            EVAL_START: self._on_eval_start,
            EVAL_STOP: self._on_stage_stop,
            STAGE_START: self._on_stage_start,
            STAGE_STOP: self._on_stage_stop,
            SAMPLE: self._on_sample,
            RUN_INFO: self._on_info,
            RUN_WARNING: self._on_warning,
        }

    # ------------------------------------------------------------------------ dispatch

    def handle(self, event: Event) -> None:
        fn = self._handlers.get(event.name)
        if fn is not None and not self._closed:
            fn(event.data)

    def close(self) -> None:
        if self._closed:
            return
        self._stop_progress()
        self._closed = True

    # ------------------------------------------------------------------------ printing

    def _print(self, renderable: Any, style: str | None = None) -> None:
        if self._pending and self._progress is not None and self._last is not None:
            self._update_progress(self._last, time.monotonic())  # the bar shows the real step
        if isinstance(renderable, str):
            self.console.print(self.prefix + renderable, style=style, markup=False, highlight=False, soft_wrap=True)
        elif self.prefix:
            self.console.print(Text(self.prefix.rstrip(), style="dim"))
            self.console.print(renderable)
        else:
            self.console.print(renderable)

    # -------------------------------------------------------------------------- events

    def _on_start(self, d: Mapping[str, Any]) -> None:
        self._workflow = str(d.get("workflow") or d.get("recipe") or "train")
        self._run_dir = None if d.get("run_dir") is None else str(d.get("run_dir"))
        total = _num(d.get("total_steps"))
        self._total = int(total) if total is not None and total > 0 else None
        resumed = _num(d.get("resumed_from_step"))
        self._resumed_from = int(resumed) if resumed else 0
        self._t0 = time.monotonic()
        self._summarised = False
        if self.every is None:
            self._every_n = max(1, self._total // 20) if self._total else 50
        parts = [f"{self._workflow}"]
        if d.get("recipe") and d.get("recipe") != self._workflow:
            parts.append(f"recipe {d.get('recipe')}")
        if d.get("model"):
            parts.append(f"model {d.get('model')}")
        if d.get("backend"):
            parts.append(f"backend {d.get('backend')}")
        if self._total:
            parts.append(f"{self._total} steps")
        if self._resumed_from:
            parts.append(f"resumed from step {self._resumed_from}")
        if self._run_dir:
            parts.append(f"run dir {self._run_dir}")
        if self.live:
            self._print(Text.assemble(("▶ ", "bold green"), (parts[0], "bold"), (" · " + " · ".join(parts[1:]) if len(parts) > 1 else "", "")))
            self._start_progress()
        else:
            self._print("start " + ", ".join(parts))

    def _on_step(self, d: Mapping[str, Any]) -> None:
        self._last = d
        step = d.get("step")
        if not self._seen_step:
            self._seen_step = True
            self._first_loss = d.get("loss")
            first_step, first_elapsed = _num(d.get("step")), _num(d.get("elapsed_s"))
            if first_elapsed is None:
                first_elapsed = time.monotonic() - self._t0
            if first_step is not None:
                self._eta_base = (first_step, first_elapsed)
            if self._total is None:
                total = _num(d.get("total_steps"))
                if total:
                    self._total = int(total)
                    if self.every is None:
                        self._every_n = max(1, self._total // 20)
            first = True
        else:
            first = False
        now = time.monotonic()
        if self.live:
            if first or now - self._updated_at >= _LIVE_UPDATE_S or step == self._total:
                self._update_progress(d, now)
            else:
                self._pending = True
            return
        last_printed = self._printed_step
        if (
            first
            or step == self._total
            or now - self._printed_at >= self.interval_s
            or (isinstance(step, int) and step % self._every_n == 0 and step != last_printed)
        ):
            self._printed_step = step if isinstance(step, int) else last_printed
            self._printed_at = now
            self._print(self._step_line(d))

    def _on_eval(self, d: Mapping[str, Any]) -> None:
        metrics = d.get("metrics")
        metrics = metrics if isinstance(metrics, Mapping) else {}
        split = d.get("split")
        for k, v in metrics.items():
            self._evals_first.setdefault(str(k), v)
            self._evals_last[str(k)] = v
            self._evals_seen[str(k)] = self._evals_seen.get(str(k), 0) + 1
        body = "  ".join(f"{k} {fmt_num(v)}" for k, v in metrics.items()) or "(no metrics)"
        where = f"step {d.get('step')}" + (f" [{split}]" if split else "")
        if self.live:
            self._print(Text.assemble(("eval ", "bold cyan"), (where + "  ", "cyan"), body))
        else:
            self._print(f"eval {where} {body}")

    def _on_eval_start(self, d: Mapping[str, Any]) -> None:
        # evals can take a while: bring a throttled bar up to date before one starts
        if self._pending and self._progress is not None and self._last is not None:
            self._update_progress(self._last, time.monotonic())
        self._show_stage("evaluate")

    def _on_stage_start(self, d: Mapping[str, Any]) -> None:
        # Only top-level stages are announced (the training loop's own stages are not), so the
        # bar says what a long pause is: load_model, evaluate, save_checkpoint, save_weights...
        self._show_stage(str(d.get("stage") or ""))

    def _on_stage_stop(self, d: Mapping[str, Any]) -> None:
        self._show_stage(None)

    def _show_stage(self, stage: str | None) -> None:
        self._stage = stage or None
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=self._description())
            if self._last is not None:  # re-fit the stats to the room the new description leaves
                self._update_progress(self._last, time.monotonic())

    def _description(self) -> str:
        return escape(_shorten(self._workflow + (f" · {self._stage}…" if self._stage else ""), _DESC_WIDTH))

    def _on_checkpoint(self, d: Mapping[str, Any]) -> None:
        name = d.get("name")
        label = f"checkpoint {name}" if name else "checkpoint"
        line = f"{label} at step {d.get('step')}" + (f" -> {d.get('path')}" if d.get("path") else "")
        self._print(line, style="green" if self.live else None)

    def _on_sample(self, d: Mapping[str, Any]) -> None:
        tag = str(d.get("tag") or "sample")
        if tag == "rollout":
            now = time.monotonic()
            if now - self._sample_at < self.sample_interval_s:
                return
            self._sample_at = now
        reward = d.get("reward")
        head = f"{tag} · step {d.get('step')}" + (f" · reward {fmt_num(reward)}" if reward is not None else "")
        if self.live:
            body = Group(
                Text(_shorten(d.get("prompt"), 400), style="dim"),
                Text(_shorten(d.get("completion"), 800)),
            )
            style = {"before": "yellow", "after": "green"}.get(tag, "magenta")
            self._print(Panel(body, title=escape(head), title_align="left", border_style=style, expand=True))
        else:
            self._print(f"sample [{head}] {_one_line(d.get('prompt'), 160)!r} -> {_one_line(d.get('completion'), 240)!r}")

    def _on_info(self, d: Mapping[str, Any]) -> None:
        msg = str(d.get("message", ""))
        self._print(msg if self.live else f"info {msg}", style="dim" if self.live else None)

    def _on_warning(self, d: Mapping[str, Any]) -> None:
        msg = str(d.get("message", ""))
        if self.live:
            self._print(Text.assemble(("warning ", "bold yellow"), msg))
        else:
            self._print(f"warning {msg}")

    def _on_exception(self, d: Mapping[str, Any]) -> None:
        kind, err = d.get("type"), d.get("error")
        self._error = f"{kind}: {err}" if kind else str(err)

    def _on_stage_exception(self, d: Mapping[str, Any]) -> None:
        if self._error is None:
            self._error = f"in stage {d.get('stage')}: {d.get('error')}"

    def _on_stop(self, d: Mapping[str, Any]) -> None:
        if self.live:
            status = RunStatus.of(d.get("status"))
            failed = not (status and status.finished_well)
            if self._pending and self._last is not None and not failed:
                self._update_progress(self._last, time.monotonic())
            self._stop_progress(clear=failed)  # a failed run's bar is stale: clear it
        elif self._last is not None and self._printed_step != self._last.get("step"):
            self._print(self._step_line(self._last))  # the last step is always shown
            self._printed_step = self._last.get("step")
        if not self._summarised:
            self._summarised = True
            self._summary(d)

    # --------------------------------------------------------------------- step line

    def _eta(self, d: Mapping[str, Any]) -> float | None:
        step, total = _num(d.get("step")), self._total
        if step is None or not total:
            return None
        elapsed = self._elapsed(d)
        # The rate is measured from the end of the first step: its warm-up (compilation, caches,
        # a remote session starting) would otherwise inflate every early estimate.
        if self._eta_base is None:
            return None
        base_step, base_elapsed = self._eta_base
        done, spent = step - base_step, elapsed - base_elapsed
        if done <= 0 or spent <= 0:
            return None
        return max(0.0, (total - step) * spent / done)

    def _elapsed(self, d: Mapping[str, Any]) -> float:
        elapsed = _num(d.get("elapsed_s"))
        return elapsed if elapsed is not None else time.monotonic() - self._t0

    def _extras(self, d: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        for k, v in d.items():
            if k in _STEP_KEYS or _num(v) is None or ":" in k or k.startswith(_BOOKKEEPING):
                continue
            out.append((k, fmt_num(v)))
            if len(out) >= _MAX_EXTRAS:
                break
        return out

    def _stats(self, d: Mapping[str, Any]) -> list[str]:
        """loss, lr, tok/s, extra metrics and ETA of one training.step, as "name value" items."""
        stats = [f"loss {fmt_num(d.get('loss'))}"]
        eta = self._eta(d)
        if eta is not None:  # right after the loss, so a narrow terminal still shows it
            stats.append(f"eta {fmt_duration(eta)}")
        if d.get("lr") is not None:
            stats.append(f"lr {fmt_lr(d.get('lr'))}")
        tps = _num(d.get("tokens_per_s"))
        if tps is not None and math.isfinite(tps):
            stats.append(f"tok/s {tps:.0f}")
        stats.extend(f"{k} {v}" for k, v in self._extras(d))
        if not self.live:  # the live bar has its own labelled elapsed column
            stats.append(f"elapsed {fmt_duration(self._elapsed(d))}")
        return stats

    def _step_line(self, d: Mapping[str, Any]) -> str:
        total = self._total
        head = f"step {d.get('step')}/{total}" if total else f"step {d.get('step')}"
        return " ".join([head, *self._stats(d)])

    # -------------------------------------------------------------------------- live

    def _start_progress(self) -> None:
        if self._progress is not None:
            return
        # Column order and widths keep what matters at 80 columns: the step counter and the
        # labelled elapsed time never wrap or shrink; the stats text gives way (ellipsis) first.
        self._progress = Progress(
            TextColumn("[bold blue]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=self._bar_width()),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TextColumn("elapsed", style="dim", table_column=Column(no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[stats]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
            console=self.console,
            refresh_per_second=5,
            transient=False,
        )
        self._task = self._progress.add_task(
            self._description(), total=self._total, completed=self._resumed_from, stats=""
        )
        self._progress.start()

    def _update_progress(self, d: Mapping[str, Any], now: float) -> None:
        if self._progress is None:
            self._start_progress()
        assert self._progress is not None
        self._updated_at = now
        self._pending = False
        stats = self._stats(d)
        step = _num(d.get("step"))
        # The stats give way first on a narrow terminal: cut them to what is left after the
        # description, the bar, "step/total" and "elapsed h:mm:ss" (6 column gaps).
        total = self._total or 0
        fixed = len(self._description()) + self._bar_width() + 2 * len(str(max(total, int(step or 0)))) + 1 + len("elapsed 0:00:00") + 6
        room = max(8, self.console.width - fixed - 1)
        self._progress.update(
            self._task,
            completed=step if step is not None else None,
            total=self._total,
            stats=escape(_shorten(" · ".join(stats), room)),
        )

    def _bar_width(self) -> int:
        return _BAR_WIDTH if self.console.width >= 100 else 8  # narrow terminals keep the numbers, not the bar

    def _stop_progress(self, clear: bool = False) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            try:
                if clear:
                    progress.live.transient = True
                progress.stop()
            except Exception:  # noqa: BLE001 - never let the bar end a run
                pass

    # ----------------------------------------------------------------------- summary

    def _summary(self, d: Mapping[str, Any]) -> None:
        status = str(d.get("status") or "unknown")
        last = self._last or {}
        step = d.get("step", last.get("step"))
        final = d.get("final_metrics")
        final = final if isinstance(final, Mapping) else {}
        loss = last.get("loss") if last.get("loss") is not None else final.get("loss")
        rows: list[tuple[str, str]] = [("status", status)]
        steps = f"{step}/{self._total}" if self._total else f"{step}"
        if self._resumed_from:
            steps += f" (resumed from {self._resumed_from})"
        rows.append(("steps", steps))
        if loss is not None:
            first = self._first_loss
            rows.append(("loss", f"{fmt_num(first)} → {fmt_num(loss)}" if first is not None and self._seen_step else fmt_num(loss)))
        evals = dict(self._evals_last)
        for k, v in final.items():  # final eval numbers the engine put in the summary
            if k != "loss" and k not in evals and _num(v) is not None:
                evals[k] = v
        for k, v in list(evals.items())[:6]:
            first = self._evals_first.get(k)
            several = self._evals_seen.get(k, 0) > 1 and first is not None
            rows.append((k, f"{fmt_num(first)} → {fmt_num(v)}" if several else fmt_num(v)))
        if d.get("duration_s") is not None:
            rows.append(("duration", fmt_duration(d.get("duration_s"))))
        if self._run_dir:
            rows.append(("run dir", self._run_dir))
        # The error itself is printed once, by whoever ends the run (the CLI's one paragraph, the
        # traceback, or the sweep summary), not repeated here.

        if self.live:
            color = known.color if (known := RunStatus.of(status)) else "white"
            table = Table(title=f"{escape(self._workflow)} summary", show_header=False, title_style="bold", box=None, padding=(0, 2))
            table.add_column(style="bold")
            table.add_column()
            for k, v in rows:
                table.add_row(escape(k), Text(v, style=color) if k == "status" else Text(v))
            self._print(table)
        else:
            self._print(f"summary {self._workflow}: " + ", ".join(f"{k} {v}" for k, v in rows))


__all__ = ["ConsoleSink", "fmt_duration", "fmt_lr", "fmt_num"]
