"""The engine's IR semantics: stage, loop, conditional, parallel, validate and rollback."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kitchen.engine.context import Adapters, Context
from kitchen.engine.ir import Workflow, conditional, every, loop, parallel, stage
from kitchen.engine.runner import Runner
from kitchen.engine.stage import Stage, register_stage
from kitchen.errors import ConfigError
from kitchen.telemetry import events as ev
from kitchen.telemetry.events import EventBus


@register_stage("test_record")
class Record(Stage):
    def execute(self, ctx: Context) -> None:
        ctx.state.setdefault("trace", []).append((self.options.get("tag"), ctx.state.get("item")))


@register_stage("test_step")
class Step(Stage):
    def execute(self, ctx: Context) -> None:
        ctx.state["step"] = ctx.state.get("step", 0) + 1


@register_stage("test_sleep")
class Sleep(Stage):
    lock = threading.Lock()

    def execute(self, ctx: Context) -> None:
        with self.lock:
            ctx.state["running"] = ctx.state.get("running", 0) + 1
            ctx.state["peak"] = max(ctx.state.get("peak", 0), ctx.state["running"])
        time.sleep(0.05)
        with self.lock:
            ctx.state["running"] -= 1
            ctx.state.setdefault("done", []).append(self.options["tag"])


@register_stage("test_undoable")
class Undoable(Stage):
    def execute(self, ctx: Context) -> None:
        ctx.state.setdefault("did", []).append(self.options["tag"])

    def rollback(self, ctx: Context, error: BaseException) -> None:
        ctx.state.setdefault("undone", []).append(self.options["tag"])


@register_stage("test_boom")
class Boom(Stage):
    def execute(self, ctx: Context) -> None:
        raise RuntimeError("boom")


@register_stage("test_picky")
class Picky(Stage):
    def validate(self, ctx: Context) -> None:
        if ctx.spec.eval_every < 0:
            raise ConfigError("eval_every must not be negative")
        ctx.state["validated"] = True

    def execute(self, ctx: Context) -> None:
        assert ctx.state["validated"]


def make_ctx(**spec) -> Context:
    return Context(spec=SimpleNamespace(**spec), adapters=Adapters(None, None), bus=EventBus(), run_dir=Path("."))


def run(nodes, ctx: Context) -> Context:
    runner = Runner(Workflow("t", "test", tuple(nodes)))
    runner.validate(ctx)
    runner.run(ctx)
    return ctx


def test_loop_over_state_key_and_callable_binds_the_item():
    ctx = make_ctx()
    ctx.state["items"] = ["a", "b"]
    run([loop("outer", over="items", var="item", body=[stage("test_record", tag="x")]),
         loop("inner", over=lambda c: [1, 2, 3], var="item", body=[stage("test_record", tag="y")])], ctx)
    assert ctx.state["trace"] == [("x", "a"), ("x", "b"), ("y", 1), ("y", 2), ("y", 3)]


def test_nested_loops_and_every_n_steps():
    ctx = make_ctx(eval_every=3)
    run([loop("epoch", over=lambda c: range(2), body=[
        loop("batch", over=lambda c: range(5), body=[
            stage("test_step"),
            conditional(every("eval_every"), [stage("test_record", tag="eval")], [stage("test_record", tag="skip")]),
        ])])], ctx)
    evals = [i for i, (tag, _) in enumerate(ctx.state["trace"]) if tag == "eval"]
    assert ctx.step == 10 and evals == [2, 5, 8]  # steps 3, 6, 9
    assert len(ctx.state["trace"]) == 10


def test_every_zero_means_never():
    ctx = make_ctx(eval_every=0)
    run([loop("b", over=lambda c: range(4), body=[stage("test_step"), conditional(every("eval_every"), [stage("test_record", tag="e")])])], ctx)
    assert "trace" not in ctx.state


def test_parallel_runs_branches_concurrently_within_the_bound():
    ctx = make_ctx()
    branches = [[stage("test_sleep", tag=i)] for i in range(6)]
    t0 = time.perf_counter()
    run([parallel(*branches, max_concurrency=2)], ctx)
    elapsed = time.perf_counter() - t0
    assert sorted(ctx.state["done"]) == list(range(6))
    assert ctx.state["peak"] == 2
    assert elapsed < 6 * 0.05  # really concurrent


def test_parallel_branch_failure_propagates():
    with pytest.raises(RuntimeError, match="boom"):
        run([parallel([stage("test_record", tag="ok")], [stage("test_boom")])], make_ctx())


def test_validate_runs_before_anything_executes():
    ctx = make_ctx(eval_every=-1)
    runner = Runner(Workflow("t", "test", (stage("test_record", tag="first"), stage("test_picky"))))
    with pytest.raises(ConfigError, match="negative"):
        runner.validate(ctx)
    assert "trace" not in ctx.state


def test_rollback_runs_newest_first_on_failure_and_emits_stage_exception():
    ctx = make_ctx()
    seen = []
    ctx.bus.listen(lambda e: seen.append(e))
    with pytest.raises(RuntimeError):
        run([stage("test_undoable", tag="a"), stage("test_undoable", tag="b"), stage("test_boom"), stage("test_undoable", tag="c")], ctx)
    assert ctx.state["did"] == ["a", "b"]
    assert ctx.state["undone"] == ["b", "a"]
    failed = [e for e in seen if e.name == ev.STAGE_EXCEPTION]
    assert failed and failed[0].data["stage"] == "test_boom" and failed[0].data["error"] == "boom"


def test_stage_events_for_top_level_and_timings_for_looped_stages():
    ctx = make_ctx()
    seen = []
    ctx.bus.listen(lambda e: seen.append(e.name))
    run([stage("test_record", tag="top"), loop("l", over=lambda c: range(3), body=[stage("test_step")])], ctx)
    assert seen == [ev.STAGE_START, ev.STAGE_STOP]
    assert ctx.state["stage_time"]["test_step"] > 0


def test_stop_request_ends_the_loop_between_steps():
    from kitchen.engine.runner import StopRun

    @register_stage("test_stopper")
    class Stopper(Stage):
        def execute(self, ctx: Context) -> None:
            ctx.state["step"] = ctx.state.get("step", 0) + 1
            if ctx.step == 2:
                ctx.stop_requested = True

    ctx = make_ctx()
    with pytest.raises(StopRun):
        run([loop("b", over=lambda c: range(10), body=[stage("test_stopper")])], ctx)
    assert ctx.step == 2


def test_unknown_stage_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'checkpoint'"):
        Runner(Workflow("t", "test", (stage("checkpiont"),))).validate(make_ctx())


def test_failing_sink_is_dropped_and_others_keep_receiving(caplog):
    bus = EventBus()
    got = []

    class Bad:
        def handle(self, e):
            raise ValueError("sink broke")

        def close(self):
            pass

    class Good:
        def handle(self, e):
            got.append(e.name)

        def close(self):
            pass

    bus.subscribe(Bad())
    bus.subscribe(Good())
    bus.emit("a")
    bus.emit("b")
    assert got == ["a", "b"] and bus.dropped == ["Bad"]
