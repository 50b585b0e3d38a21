"""A console that tells the truth (issue 10): labelled times, stage names, 80 columns, one error, quiet SDKs."""

from __future__ import annotations

import io

from rich.console import Console

from conftest import run_kitchen
from kitchen.serve.testing import serve_subprocess
from kitchen.telemetry.console import ConsoleSink
from kitchen.telemetry.events import Event, EventBus
from kitchen.telemetry.sinks import SinkContext, build_sinks

KEY = "tml-console-test-key-77aa"


def live_sink(width: int = 80) -> tuple[ConsoleSink, EventBus, io.StringIO]:
    buf = io.StringIO()
    sink = ConsoleSink(Console(file=buf, force_terminal=True, width=width), live=True)
    bus = EventBus()
    bus.subscribe(sink)
    return sink, bus, buf


def bar_text(sink: ConsoleSink, width: int = 80) -> str:
    """The bar exactly as rich lays it out at ``width`` columns."""
    out = Console(file=io.StringIO(), width=width, record=True)
    out.print(sink._progress.get_renderable())
    return out.export_text()


def steps(bus: EventBus, upto: int, total: int, first_s: float = 30.0, per_step_s: float = 1.0) -> None:
    for step in range(1, upto + 1):
        bus.emit("training.step", step=step, total_steps=total, loss=1.2345, lr=3e-4, tokens=1000, tokens_per_s=12345.0,
                 elapsed_s=first_s + per_step_s * (step - 1), reward_mean=0.5, grad_norm=0.25, kl=0.01)


def test_bar_keeps_step_counter_eta_and_labelled_elapsed_at_80_columns():
    sink, bus, _ = live_sink(80)
    bus.emit("workflow.start", workflow="reinforcement", recipe="rl_basic", total_steps=1000, run_dir="runs/x")
    steps(bus, 12, 1000)
    sink._update_progress(sink._last, 0.0)
    text = bar_text(sink).rstrip("\n")
    assert "\n" not in text and len(text) <= 80, text
    assert "12/1000" in text and "elapsed 0:" in text and "eta 0:" in text and "loss 1.234" in text, text
    bus.close()


def test_bar_names_the_running_stage_instead_of_freezing_on_the_last_step():
    sink, bus, _ = live_sink(100)
    bus.emit("workflow.start", workflow="supervised", total_steps=10)
    steps(bus, 10, 10)
    for stage in ("evaluate", "save_checkpoint", "save_weights"):
        bus.emit("stage.start", stage=stage, path=stage, step=10)
        assert f"supervised · {stage}…" in bar_text(sink, 100)
        bus.emit("stage.stop", stage=stage, path=stage, step=10, duration_s=1.0)
        assert "…" not in bar_text(sink, 100).split("━")[0]
    bus.emit("eval.start", step=10, split="test")  # an eval inside the training loop
    assert "supervised · evaluate…" in bar_text(sink, 100)
    bus.emit("eval.stop", step=10, duration_s=0.5)
    bus.close()


def test_early_eta_does_not_count_the_first_steps_warm_up():
    buf = io.StringIO()
    sink = ConsoleSink(Console(file=buf, force_terminal=False, width=200), every=1)
    bus = EventBus()
    bus.subscribe(sink)
    bus.emit("workflow.start", workflow="supervised", total_steps=100)
    steps(bus, 11, 100, first_s=30.0, per_step_s=1.0)  # 30 s of warm-up, then 1 s per step
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("step ")]
    assert "eta" not in lines[0] and "elapsed 0:00:30" in lines[0]
    assert "eta 0:01:29" in lines[10] and "elapsed 0:00:40" in lines[10]  # 89 steps left at 1 s/step, not 5 minutes
    bus.close()


def bar_erased(out: str) -> bool:
    """Whether the bar's last frame (the last line with "elapsed") was wiped before the summary was printed."""
    after = out[out.rindex("elapsed"):out.index("summary")]
    return "\x1b[2K" in after


def test_a_failed_run_clears_the_stale_bar_and_does_not_repeat_the_error():
    sink, bus, buf = live_sink(80)
    bus.emit("workflow.start", workflow="supervised", total_steps=100)
    steps(bus, 7, 100)
    bus.emit("workflow.exception", error="the Tinker server rejected the request", type="BackendError")
    bus.emit("workflow.stop", status="failed", step=7, duration_s=3.0)
    out = buf.getvalue()
    assert bar_erased(out)
    assert "rejected the request" not in out  # printed once, by the CLI
    assert "failed" in out[out.index("summary"):]
    bus.close()

    sink, bus, buf = live_sink(80)  # a completed run keeps its final bar
    bus.emit("workflow.start", workflow="supervised", total_steps=7)
    steps(bus, 7, 7)
    bus.emit("workflow.stop", status="completed", step=7, duration_s=3.0)
    assert not bar_erased(buf.getvalue())
    bus.close()


def test_sweep_jobs_prefix_their_lines_with_the_job_number(tmp_path, monkeypatch):
    monkeypatch.setenv("KITCHEN_SWEEP_JOB", "3")
    (sink,) = build_sinks(["console"], SinkContext(run_dir=tmp_path))
    buf = io.StringIO()
    sink.console = Console(file=buf, width=120)
    assert sink.live is False  # parallel jobs share a terminal: plain lines
    sink.handle(Event("workflow.start", {"workflow": "supervised", "total_steps": 2}))
    sink.handle(Event("training.step", {"step": 1, "total_steps": 2, "loss": 1.0}))
    sink.handle(Event("workflow.stop", {"status": "completed", "step": 1}))
    lines = buf.getvalue().splitlines()
    assert lines and all(line.startswith("[job 3] ") for line in lines), lines


# ------------------------------------------------------- end to end, through kitchen serve


TINY = ("recipe=sl_basic", "adapters=tinker", "model=tiny-llama", "max_steps=3", "batch_size=2", "num_preview_samples=0",
        "eval_every=0")


def test_tinker_retry_chatter_goes_to_the_debug_log_not_the_console(tmp_path, capfd, caplog):
    """The adapter's own retry loop and the SDK's loggers, routed for the run's lifetime."""
    import logging

    from kitchen.adapters.tinker.client import call_with_retries
    from kitchen.telemetry.sdk_logs import SdkLogRouter

    attempts = iter([ConnectionError("503 from the service"), ConnectionError("503 again"), None])

    def flaky() -> str:
        exc = next(attempts)
        if exc is not None:
            raise exc
        return "ok"

    caplog.set_level(logging.DEBUG)
    router = SdkLogRouter(tmp_path)
    assert call_with_retries(flaky, max_retries=3, backoff_s=0.0, sleep=lambda s: None, what="forward_backward") == "ok"
    logging.getLogger("tinker.lib.internal_client_holder").warning("Waiting in queue: https://user:hunter2@tinker.example")
    router.close()
    assert capfd.readouterr().err == ""
    assert caplog.records == []  # nothing propagated towards the console's handlers
    log = (tmp_path / "debug.log").read_text()
    assert "forward_backward failed (ConnectionError: 503 from the service); retry 1/3" in log
    assert "retry 2/3" in log and "Waiting in queue" in log and "hunter2" not in log
    logging.getLogger("kitchen.tinker").warning("after the run")  # the router is gone: back to the default
    assert [r.getMessage() for r in caplog.records] == ["after the run"]
    assert "after the run" not in (tmp_path / "debug.log").read_text()


def test_a_failure_mid_run_prints_its_error_once(tmp_path):
    run_dir = tmp_path / "run"
    with serve_subprocess(KEY, "noop", faults="forward_backward:400:1") as srv:
        r = run_kitchen("run", *TINY, f"run_dir={run_dir}", env={"TINKER_BASE_URL": srv.base_url, "TINKER_API_KEY": KEY})
    assert r.code == 2, r
    assert r.text.count("injected fault for forward_backward") == 1, r.text
    assert "status failed" in r.out and "Traceback" not in r.text
