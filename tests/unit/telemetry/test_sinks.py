"""Console and JSONL sinks, the metrics store, and the bus's drop-a-failing-sink rule."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from kitchen.io.jsonl import dumps
from kitchen.io.secrets import is_secret_key, redact
from kitchen.ports.stores import MetricsStore
from kitchen.telemetry.console import ConsoleSink, fmt_duration
from kitchen.telemetry.events import Event, EventBus
from kitchen.telemetry.jsonl import JsonlSink
from kitchen.telemetry.metrics_store import JsonlMetricsStore, read_metrics


def emit_run(bus: EventBus, run_dir: str = "runs/demo", total: int = 20, resumed: int = 0, eval_every: int = 10) -> None:
    """A whole run's worth of events, in the engine's payload conventions."""
    bus.emit("workflow.start", workflow="sft", recipe="sft_tiny", run_dir=run_dir, total_steps=total,
             model="tiny-model", backend="noop", resumed_from_step=resumed)
    bus.emit("run.info", message="model loaded")
    bus.emit("sample.completion", tag="before", prompt="What is 2+2?", completion="[bold]five", step=resumed)
    bus.emit("eval.start", step=resumed, split="test")
    bus.emit("eval.result", step=resumed, split="test", metrics={"test_nll": 2.5})
    bus.emit("eval.stop", step=resumed, duration_s=0.1)
    for step in range(resumed + 1, total + 1):
        bus.emit("stage.start", stage="forward_backward", path="epoch/batch/forward_backward", step=step)
        bus.emit("stage.stop", stage="forward_backward", path="epoch/batch/forward_backward", step=step, duration_s=0.01)
        bus.emit("training.step", step=step, total_steps=total, epoch=0, loss=2.0 / step, lr=3e-4, tokens=128,
                 tokens_per_s=151.0, elapsed_s=0.5 * (step - resumed), grad_norm=np.float32(0.25))
        if step % eval_every == 0:
            bus.emit("eval.result", step=step, split="test", metrics={"test_nll": 1.0 + 1.0 / step})
            bus.emit("training.checkpoint", step=step, name=f"step_{step:06d}", path=f"{run_dir}/checkpoints/step_{step:06d}")
    bus.emit("training.epoch", epoch=0, step=total)
    bus.emit("run.warning", message="loss spiked at step 7")
    bus.emit("sample.completion", tag="after", prompt="What is 2+2?", completion="4", step=total, reward=1.0)
    bus.emit("workflow.stop", status="completed", step=total, duration_s=12.3, final_metrics={"loss": 2.0 / total})


# ------------------------------------------------------------------------- console


def plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=100), buf


def test_console_plain_lines_eval_and_summary():
    console, buf = plain_console()
    bus = EventBus()
    sink = ConsoleSink(console)
    assert sink.live is False  # not a terminal -> plain lines
    bus.subscribe(sink)
    emit_run(bus, total=100)
    bus.close()
    out = buf.getvalue()
    lines = out.splitlines()
    step_lines = [ln for ln in lines if ln.startswith("step ")]
    assert step_lines[0].startswith("step 1/100 loss 2 lr 3.0e-04 tok/s 151")
    assert "eta " not in step_lines[0]  # no estimate from the warm-up step alone (issue 10)
    assert "elapsed 0:00:00" in step_lines[0]  # labelled
    assert "eta 0:00:48" in step_lines[1] and "elapsed 0:00:02" in step_lines[1]  # step 5: 95 steps left at 0.5 s/step
    assert step_lines[-1].startswith("step 100/100 ")
    assert "eta 0:00:00" in step_lines[-1]
    assert 2 < len(step_lines) < 100  # throttled (every total/20 steps), first and last always
    assert "step 5/100" in out and "step 6/100" not in out
    assert any(ln.startswith("eval step 10 [test] test_nll 1.1") for ln in lines)
    assert "checkpoint step_000010 at step 10 -> runs/demo/checkpoints/step_000010" in out
    assert "warning loss spiked at step 7" in out
    assert "info model loaded" in out
    assert "[bold]five" in out  # completions are printed verbatim, not as markup
    summary = [ln for ln in lines if ln.startswith("summary")]
    assert len(summary) == 1
    for part in ("status completed", "steps 100/100", "test_nll 2.5 → 1.01", "duration 0:00:12", "run dir runs/demo", "loss 2 → 0.02"):
        assert part in summary[0], (part, summary[0])
    assert "\x1b[" not in out  # no ANSI escapes in plain mode


def test_console_plain_prints_last_step_even_when_throttled_and_resumed():
    console, buf = plain_console()
    sink = ConsoleSink(console, every=1000, interval_s=3600)
    bus = EventBus()
    bus.subscribe(sink)
    emit_run(bus, total=37, resumed=20, eval_every=100)
    out = buf.getvalue()
    steps = [ln for ln in out.splitlines() if ln.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["21/37", "37/37"]
    assert "resumed from step 20" in out
    assert "steps 37/37 (resumed from 20)" in out


def test_console_plain_time_based_lines(monkeypatch):
    import kitchen.telemetry.console as console_mod

    clock = iter(range(0, 10_000, 3))  # every event is 3 s after the previous one
    monkeypatch.setattr(console_mod.time, "monotonic", lambda: float(next(clock)))
    console, buf = plain_console()
    sink = ConsoleSink(console, every=10_000)
    for step in range(1, 6):
        sink.handle(Event("training.step", {"step": step, "total_steps": 10_000, "loss": 1.0}))
    assert len([ln for ln in buf.getvalue().splitlines() if ln.startswith("step ")]) == 5


def test_console_tolerates_missing_and_extra_keys():
    console, buf = plain_console()
    sink = ConsoleSink(console)
    for name, data in [
        ("workflow.start", {}),
        ("training.step", {"step": 1}),
        ("training.step", {"loss": None, "weird": object(), "reward_mean": 0.5}),
        ("eval.result", {"metrics": "not-a-dict"}),
        ("training.checkpoint", {}),
        ("sample.completion", {}),
        ("sample.completion", {"tag": "rollout", "prompt": None, "completion": 3}),
        ("run.info", {}),
        ("run.warning", {"message": None}),
        ("workflow.exception", {"error": "boom", "type": "RuntimeError"}),
        ("stage.exception", {}),
        ("something.new", {"x": 1}),
        ("workflow.stop", {"status": "failed", "final_metrics": None}),
    ]:
        sink.handle(Event(name, data))
    sink.close()
    out = buf.getvalue()
    assert "status failed" in out and "RuntimeError: boom" not in out  # the CLI prints the error once (issue 10)


def test_console_extra_metrics_and_nan_loss():
    console, buf = plain_console()
    sink = ConsoleSink(console)
    sink.handle(Event("training.step", {"step": 1, "total_steps": 2, "loss": float("nan"), "lr": 1e-5,
                                        "reward_mean": np.float64(0.75), "dpo_accuracy": 0.5}))
    line = buf.getvalue().strip()
    assert line.startswith("step 1/2 loss nan lr 1.0e-05")
    assert "reward_mean 0.75" in line and "dpo_accuracy 0.5" in line


def test_console_rollout_samples_are_rate_limited():
    console, buf = plain_console()
    sink = ConsoleSink(console, sample_interval_s=3600)
    for step in range(5):
        sink.handle(Event("sample.completion", {"tag": "rollout", "prompt": "p", "completion": "c", "step": step, "reward": 1}))
    sink.handle(Event("sample.completion", {"tag": "after", "prompt": "p", "completion": "c\nd", "step": 9}))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("sample [rollout · step 0 · reward 1]")
    assert lines[1] == "sample [after · step 9] 'p' -> 'c⏎ d'"


def test_console_live_mode_whole_run_does_not_crash():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    sink = ConsoleSink(console)
    assert sink.live is True
    bus = EventBus()
    bus.subscribe(sink)
    emit_run(bus, total=50)
    bus.close()
    assert bus.dropped == []
    out = buf.getvalue()
    assert "50/50" in out  # the final progress state is flushed before the summary
    assert "summary" in out and "completed" in out
    assert "test_nll" in out and "before · step 0" in out and "model loaded" in out
    assert sink._progress is None  # stopped


def test_console_live_close_without_stop_and_failed_run():
    console = Console(file=io.StringIO(), force_terminal=True)
    sink = ConsoleSink(console, live=True)
    sink.handle(Event("training.step", {"step": 1, "loss": 1.0}))  # no workflow.start: bar starts lazily
    assert sink._progress is not None
    sink.close()
    sink.close()  # idempotent
    assert sink._progress is None
    sink2 = ConsoleSink(Console(file=io.StringIO(), force_terminal=True), live=True)
    sink2.handle(Event("workflow.start", {"total_steps": None}))
    sink2.handle(Event("workflow.exception", {"error": "x", "type": "ValueError"}))
    sink2.handle(Event("workflow.stop", {"status": "failed", "step": 0}))
    sink2.close()
    out = sink2.console.file.getvalue()
    assert "failed" in out and "ValueError: x" not in out  # the CLI prints the error, once (issue 10)


def test_fmt_duration():
    assert fmt_duration(100) == "0:01:40"
    assert fmt_duration(3725.4) == "1:02:05"
    assert fmt_duration(None) == "-:--:--"
    assert fmt_duration(float("inf")) == "-:--:--"


# --------------------------------------------------------------------------- jsonl


def read_lines(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]  # strict: every line must parse


def test_jsonl_sink_one_object_per_line_with_metrics(tmp_path: Path):
    bus = EventBus()
    sink = JsonlSink(tmp_path)
    bus.subscribe(sink)
    emit_run(bus, run_dir=str(tmp_path), total=20)
    bus.close()
    events = read_lines(tmp_path / "events.jsonl")
    assert events[0]["event"] == "workflow.start" and isinstance(events[0]["time"], float)
    assert events[0]["run_dir"] == str(tmp_path)
    names = [e["event"] for e in events]
    assert names.count("training.step") == 20 and names.count("stage.start") == 20
    assert names[-1] == "workflow.stop"
    step = next(e for e in events if e["event"] == "training.step")
    assert step["grad_norm"] == 0.25 and step["tokens"] == 128  # numpy float32 -> float; "tokens" not redacted
    ckpt = next(e for e in events if e["event"] == "training.checkpoint")
    assert ckpt["name"] == "step_000010"
    metrics = read_lines(tmp_path / "metrics.jsonl")
    train = [m for m in metrics if "split" not in m]
    assert [m["step"] for m in train] == list(range(1, 21))
    assert all("loss" in m for m in train)
    assert train[0]["loss"] == 2.0 and train[0]["lr"] == 3e-4
    evals = [m for m in metrics if "split" in m]
    assert evals[0] == {"step": 0, "split": "test", "test_nll": 2.5}
    assert evals[1] == {"step": 10, "split": "test", "test_nll": 1.1}


def test_jsonl_sink_flushes_every_step_before_close(tmp_path: Path):
    sink = JsonlSink(tmp_path)
    sink.handle(Event("training.step", {"step": 1, "loss": 0.5}))
    # not closed: the rows must already be on disk (flushed) for a tail -f or a killed run
    assert read_lines(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 0.5}]
    assert read_lines(tmp_path / "events.jsonl")[0]["loss"] == 0.5
    sink.handle(Event("training.step", {"step": 2}))  # no loss: still a loss column
    assert read_lines(tmp_path / "metrics.jsonl")[1] == {"step": 2, "loss": None}
    sink.close()
    sink.handle(Event("training.step", {"step": 3, "loss": 0.1}))  # after close: ignored
    assert len(read_lines(tmp_path / "metrics.jsonl")) == 2


def test_jsonl_sink_appends_on_reopen_and_repairs_truncated_line(tmp_path: Path):
    sink = JsonlSink(tmp_path)
    sink.handle(Event("training.step", {"step": 1, "loss": 1.0}))
    sink.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:  # a run killed mid-write
        fh.write('{"step": 2, "lo')
    sink = JsonlSink(tmp_path)
    sink.handle(Event("training.step", {"step": 2, "loss": 0.9}))
    sink.close()
    assert [e["event"] for e in read_lines(tmp_path / "events.jsonl")] == ["training.step", "training.step"]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}]


def test_jsonl_sink_redacts_nested_secrets(tmp_path: Path):
    sink = JsonlSink(tmp_path)
    payload = {
        "message": "config",
        "api_key": "sk-live-123",
        "config": {"backend": {"tinker": {"API_KEY": "sk-2", "base_url": "http://x"}},
                   "hub": [{"hf_token": "hf_abc", "repo": "me/model"}],
                   "Authorization": "Bearer zzz", "db_password": "hunter2", "clientSecret": "s"},
        "tokens": 512, "tokens_per_s": 10.0, "tokenizer": "gpt2", "max_tokens": 64,
        "token_count": 12, "token": None,
    }
    sink.handle(Event("run.info", payload))
    sink.close()
    text = (tmp_path / "events.jsonl").read_text()
    for secret in ("sk-live-123", "sk-2", "hf_abc", "Bearer", "hunter2"):
        assert secret not in text
    rec = json.loads(text)
    assert rec["api_key"] == "***"
    assert rec["config"]["backend"]["tinker"] == {"API_KEY": "***", "base_url": "http://x"}
    assert rec["config"]["hub"] == [{"hf_token": "***", "repo": "me/model"}]
    assert rec["config"]["clientSecret"] == "***"
    assert rec["tokens"] == 512 and rec["tokens_per_s"] == 10.0 and rec["tokenizer"] == "gpt2"
    assert rec["max_tokens"] == 64 and rec["token_count"] == 12 and rec["token"] is None
    assert payload["api_key"] == "sk-live-123"  # the event itself is not modified


def test_redact_copies_and_handles_sequences():
    cfg = {"a": ({"password": "p"}, 1), "nested": {"secrets": {"k": "v"}}, "accessToken": "t", "x": 1}
    out = redact(cfg)
    assert out == {"a": [{"password": "***"}, 1], "nested": {"secrets": "***"}, "accessToken": "***", "x": 1}
    assert cfg["a"][0]["password"] == "p"
    assert redact([{"api-key": "k"}]) == [{"api-key": "***"}]
    assert is_secret_key("OPENAI_API_KEY") and is_secret_key("x-auth-token") and is_secret_key("private_key")
    assert not is_secret_key("tokens") and not is_secret_key("tokenizer_name") and not is_secret_key("max_new_tokens")


def test_jsonl_serialises_nan_numpy_paths(tmp_path: Path):
    sink = JsonlSink(tmp_path)
    sink.handle(Event("training.step", {"step": np.int64(3), "loss": float("nan"), "lr": np.float32(1e-4),
                                        "grad_norm": float("inf"), "path": tmp_path, "arr": np.arange(3),
                                        "misc": {1: {"s"}, "neg": -np.inf}}))
    sink.close()
    ev = read_lines(tmp_path / "events.jsonl")[0]
    assert ev["step"] == 3 and ev["loss"] is None and ev["grad_norm"] is None
    assert ev["lr"] == pytest.approx(1e-4) and ev["path"] == str(tmp_path) and ev["arr"] == [0, 1, 2]
    assert ev["misc"] == {"1": ["s"], "neg": None}
    row = read_lines(tmp_path / "metrics.jsonl")[0]
    assert row["step"] == 3 and row["loss"] is None and row["grad_norm"] is None
    assert "NaN" not in (tmp_path / "events.jsonl").read_text()
    assert dumps({"x": float("nan")}) == '{"x": null}'


def test_payload_cannot_shadow_envelope(tmp_path: Path):
    sink = JsonlSink(tmp_path)
    sink.handle(Event("run.info", {"event": "fake", "time": "later", "message": "m"}, time=123.0))
    sink.close()
    assert read_lines(tmp_path / "events.jsonl")[0] == {"event": "run.info", "time": 123.0, "message": "m"}


def test_jsonl_skip_option_still_writes_metrics(tmp_path: Path):
    sink = JsonlSink(tmp_path, skip=("stage.start", "training.step"))
    sink.handle(Event("stage.start", {"stage": "x"}))
    sink.handle(Event("training.step", {"step": 1, "loss": 1.0}))
    sink.close()
    assert (tmp_path / "events.jsonl").read_text() == ""
    assert read_lines(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]


# ---------------------------------------------------------------------------- bus


class Exploding:
    def __init__(self) -> None:
        self.closed = False
        self.calls = 0

    def handle(self, event: Event) -> None:
        self.calls += 1
        raise RuntimeError("disk full")

    def close(self) -> None:
        self.closed = True


def test_failing_sink_is_dropped_with_one_warning_and_others_keep_going(tmp_path: Path, caplog):
    console, buf = plain_console()
    bad = Exploding()
    bus = EventBus()
    bus.subscribe(bad)
    bus.subscribe(JsonlSink(tmp_path))
    bus.subscribe(ConsoleSink(console))
    with caplog.at_level(logging.WARNING, logger="kitchen.telemetry"):
        emit_run(bus, run_dir=str(tmp_path), total=10)
    bus.close()
    assert bad.calls == 1 and bad.closed
    assert bus.dropped == ["Exploding"]
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1 and "disk full" in warnings[0].getMessage()
    assert [e["event"] for e in read_lines(tmp_path / "events.jsonl")][-1] == "workflow.stop"
    assert "summary" in buf.getvalue()


# ------------------------------------------------------------------- metrics store


def test_metrics_store_roundtrip_and_truncated_last_line(tmp_path: Path):
    path = tmp_path / "sub" / "metrics.jsonl"
    store = JsonlMetricsStore(path)
    assert isinstance(store, MetricsStore)
    assert store.read() == [] and not path.exists()  # reading creates nothing
    store.record(1, {"loss": 1.5, "lr": np.float32(0.5)})
    store.record(2, {"loss": float("nan")})
    assert store.read() == [{"step": 1, "loss": 1.5, "lr": 0.5}, {"step": 2, "loss": None}]
    store.close()
    with open(path, "a") as fh:
        fh.write('{"step": 3, "loss": 1.')  # killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    store = JsonlMetricsStore(path)  # resumed: appends after repairing the last line
    store.record(3, {"loss": 1.0})
    store.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_read_metrics_skips_garbage_and_dedupes(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2}\n[1, 2]\nnot json\n\n{"step": 2, "loss": 1.9}\n'
                    '{"step": 2, "split": "test", "test_nll": 3}\n{"step": 2, "loss": 1.8}\n{"step": 3, "loss"')
    assert [r.get("loss") for r in read_metrics(path)] == [2, 1.9, None, 1.8]
    assert read_metrics(path, dedupe=True) == [
        {"step": 1, "loss": 2}, {"step": 2, "loss": 1.8}, {"step": 2, "split": "test", "test_nll": 3},
    ]
    assert read_metrics(tmp_path / "missing.jsonl") == []
