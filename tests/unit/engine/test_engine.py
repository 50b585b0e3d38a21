"""The engine's IR semantics: stage values, typed state, loop, conditional, parallel,
validate, rollback, and the step pipeline."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kitchen.engine.context import Adapters, Context
from kitchen.engine.ir import Workflow, conditional, every, loop, parallel, stage
from kitchen.engine.runner import Runner
from kitchen.engine.stage import Stage
from kitchen.errors import ConfigError
from kitchen.telemetry import events as ev
from kitchen.telemetry.events import EventBus


@dataclass
class Trace:
    """The typed state these test stages share (what a user's own stages would do)."""

    item: Any = None
    trace: list = field(default_factory=list)
    running: int = 0
    peak: int = 0
    done: list = field(default_factory=list)
    did: list = field(default_factory=list)
    undone: list = field(default_factory=list)
    validated: bool = False


@dataclass(frozen=True)
class Record(Stage):
    tag: str = ""

    def execute(self, ctx: Context) -> None:
        t = ctx.use(Trace)
        t.trace.append((self.tag, t.item))


def test_step(ctx: Context) -> None:
    """A function is a stage too."""
    ctx.progress.step += 1


test_step.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Sleep(Stage):
    tag: int = 0
    lock = threading.Lock()

    def execute(self, ctx: Context) -> None:
        t = ctx.use(Trace)
        with self.lock:
            t.running += 1
            t.peak = max(t.peak, t.running)
        time.sleep(0.05)
        with self.lock:
            t.running -= 1
            t.done.append(self.tag)


@dataclass(frozen=True)
class Undoable(Stage):
    tag: str = ""

    def execute(self, ctx: Context) -> None:
        ctx.use(Trace).did.append(self.tag)

    def rollback(self, ctx: Context, error: BaseException) -> None:
        ctx.use(Trace).undone.append(self.tag)


class Boom(Stage):
    def execute(self, ctx: Context) -> None:
        raise RuntimeError("boom")


class Picky(Stage):
    def validate(self, ctx: Context) -> None:
        if ctx.spec.eval_every < 0:
            raise ConfigError("eval_every must not be negative")
        ctx.use(Trace).validated = True

    def execute(self, ctx: Context) -> None:
        assert ctx.use(Trace).validated


def make_ctx(**spec) -> Context:
    return Context(spec=SimpleNamespace(**spec), adapters=Adapters(None, None), bus=EventBus(), run_dir=Path("."))


def workflow(nodes) -> Workflow:
    return Workflow("t", "test", tuple(nodes), config=object)  # type: ignore[arg-type]


def run(nodes, ctx: Context) -> Context:
    runner = Runner(workflow(nodes))
    runner.validate(ctx)
    runner.run(ctx)
    return ctx


def items(values):
    """A loop source that binds the current item into typed state, as ``epochs``/``batches`` do."""

    def source(ctx: Context):
        for v in values:
            ctx.use(Trace).item = v
            yield v

    return source


def test_loop_source_binds_the_item_into_typed_state():
    ctx = make_ctx()
    run([loop("outer", over=items(["a", "b"]), body=[stage(Record, tag="x")]),
         loop("inner", over=items([1, 2, 3]), body=[stage(Record, tag="y")])], ctx)
    assert ctx.use(Trace).trace == [("x", "a"), ("x", "b"), ("y", 1), ("y", 2), ("y", 3)]


def test_nested_loops_and_every_n_steps():
    ctx = make_ctx(eval_every=3)
    run([loop("epoch", over=lambda c: range(2), body=[
        loop("batch", over=lambda c: range(5), body=[
            stage(test_step),
            conditional(every("eval_every"), [stage(Record, tag="eval")], [stage(Record, tag="skip")]),
        ])])], ctx)
    trace = ctx.use(Trace).trace
    evals = [i for i, (tag, _) in enumerate(trace) if tag == "eval"]
    assert ctx.step == 10 and evals == [2, 5, 8]  # steps 3, 6, 9
    assert len(trace) == 10


def test_every_zero_means_never():
    ctx = make_ctx(eval_every=0)
    run([loop("b", over=lambda c: range(4), body=[stage(test_step), conditional(every("eval_every"), [stage(Record, tag="e")])])], ctx)
    assert not ctx.has(Trace) or not ctx.use(Trace).trace


def test_parallel_runs_branches_concurrently_within_the_bound():
    ctx = make_ctx()
    branches = [[stage(Sleep, tag=i)] for i in range(6)]
    t0 = time.perf_counter()
    run([parallel(*branches, max_concurrency=2)], ctx)
    elapsed = time.perf_counter() - t0
    assert sorted(ctx.use(Trace).done) == list(range(6))
    assert ctx.use(Trace).peak == 2
    assert elapsed < 6 * 0.05  # really concurrent


def test_parallel_branch_failure_propagates():
    with pytest.raises(RuntimeError, match="boom"):
        run([parallel([stage(Record, tag="ok")], [stage(Boom)])], make_ctx())


def test_validate_runs_before_anything_executes():
    ctx = make_ctx(eval_every=-1)
    runner = Runner(workflow([stage(Record, tag="first"), stage(Picky)]))
    with pytest.raises(ConfigError, match="negative"):
        runner.validate(ctx)
    assert not ctx.has(Trace) or not ctx.use(Trace).trace


def test_rollback_runs_newest_first_on_failure_and_emits_stage_exception():
    ctx = make_ctx()
    seen = []
    ctx.bus.listen(lambda e: seen.append(e))
    with pytest.raises(RuntimeError):
        run([stage(Undoable, tag="a"), stage(Undoable, tag="b"), stage(Boom), stage(Undoable, tag="c")], ctx)
    assert ctx.use(Trace).did == ["a", "b"]
    assert ctx.use(Trace).undone == ["b", "a"]
    failed = [e for e in seen if e.name == ev.STAGE_EXCEPTION]
    assert failed and failed[0].data["stage"] == "boom" and failed[0].data["error"] == "boom"


def test_stage_events_for_top_level_and_timings_for_looped_stages():
    ctx = make_ctx()
    seen = []
    ctx.bus.listen(lambda e: seen.append(e.name))
    run([stage(Record, tag="top"), loop("l", over=lambda c: range(3), body=[stage(test_step)])], ctx)
    assert seen == [ev.STAGE_START, ev.STAGE_STOP]
    assert ctx.progress.stage_time["test_step"] > 0


def test_stop_request_ends_the_loop_between_steps():
    from kitchen.engine.runner import StopRun

    def stopper(ctx: Context) -> None:
        ctx.progress.step += 1
        if ctx.step == 2:
            ctx.stop_requested = True

    ctx = make_ctx()
    with pytest.raises(StopRun):
        run([loop("b", over=lambda c: range(10), body=[stage(stopper)])], ctx)
    assert ctx.step == 2


def test_a_stage_is_a_value_never_a_name():
    with pytest.raises(ConfigError, match="stages are values, not strings"):
        stage("checkpoint")


def test_stage_options_are_checked_when_the_workflow_is_built():
    with pytest.raises(ConfigError, match=r"does not take the options \['tga'\]; it accepts: tag"):
        stage(Record, tga="x")


def pipeline_spec(**keys: Any) -> SimpleNamespace:
    """The keys the step pipeline reads: the schedule and the config's optimizer()."""
    from kitchen.ports.types import OptimizerSpec

    values = {"learning_rate": 1e-3, "lr_schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0, **keys}
    return SimpleNamespace(**values, optimizer=lambda: OptimizerSpec(grad_clip_norm=1.0))


def test_a_stage_that_returns_a_step_output_is_submitted_to_the_pipeline():
    """One StepOutput per step: the pipeline sends forward_backward + optim_step, counts the
    step, and publishes the algorithm's own metrics with the backend's (nothing rides a Future)."""
    from kitchen.adapters.noop import NoopTrainingClient
    from kitchen.engine.pipeline import StepOutput
    from kitchen.ports.types import Datum

    datum = Datum([1, 2, 3], {"target_tokens": [2, 3, 4], "weights": [0.0, 1.0, 1.0]})

    def train(ctx: Context) -> StepOutput:
        return StepOutput([datum], "cross_entropy", metrics={"reward_mean": 0.5}, loss=1.25, drop_metrics=("loss:sum",))

    spec = pipeline_spec(pipeline_depth=1)
    client = NoopTrainingClient()
    ctx = Context(spec=spec, adapters=Adapters(client, None), bus=EventBus(), run_dir=Path("."))  # type: ignore[arg-type]
    steps = []
    ctx.bus.listen(lambda e: steps.append(e.data) if e.name == ev.TRAINING_STEP else None)
    ctx.progress.total_steps = 3
    run([loop("s", over=lambda c: range(3), body=[stage(train)])], ctx)
    assert [s["step"] for s in steps] == [1, 2]  # depth 1: the last step is still in flight
    ctx.pipeline.drain()
    assert [s["step"] for s in steps] == [1, 2, 3] and ctx.step == 3
    assert all(s["loss"] == 1.25 and s["reward_mean"] == 0.5 and "loss:sum" not in s for s in steps)


def test_a_step_is_timed_when_it_finishes_not_when_it_is_published():
    """Depth 1 publishes a step when the next is submitted, and a drain (before an eval or a
    checkpoint) publishes the last at once: elapsed_s must still be each step's own finish time,
    or the step before an eval shows the next step's time and the ETA runs a step off."""
    import time

    from kitchen.adapters.noop import NoopTrainingClient
    from kitchen.engine.pipeline import StepOutput
    from kitchen.ports.types import Datum

    datum = Datum([1, 2, 3], {"target_tokens": [2, 3, 4], "weights": [0.0, 1.0, 1.0]})
    spec = pipeline_spec(pipeline_depth=1)
    client = NoopTrainingClient()
    real = client.forward_backward

    def slow_forward_backward(*args, **kwargs):  # a backend that computes in the call, like the local one
        time.sleep(0.1)
        return real(*args, **kwargs)

    client.forward_backward = slow_forward_backward  # type: ignore[method-assign]
    ctx = Context(spec=spec, adapters=Adapters(client, None), bus=EventBus(), run_dir=Path("."))  # type: ignore[arg-type]
    steps = []
    ctx.bus.listen(lambda e: steps.append(e.data) if e.name == ev.TRAINING_STEP else None)
    ctx.progress.total_steps = 4
    run([loop("s", over=lambda c: range(4), body=[stage(lambda c: StepOutput([datum], "cross_entropy"))])], ctx)
    ctx.pipeline.drain()
    elapsed = [s["elapsed_s"] for s in steps]
    gaps = [b - a for a, b in zip(elapsed, elapsed[1:])]
    assert elapsed[0] < 0.18 and all(g > 0.06 for g in gaps), elapsed


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


def test_a_step_output_without_datums_is_counted_but_moves_nothing():
    """Nothing to learn from (every RL group tied): the step is logged, the backend is not called."""
    from kitchen.adapters.noop import NoopTrainingClient
    from kitchen.engine.pipeline import StepOutput

    spec = pipeline_spec(pipeline_depth=0)
    client = NoopTrainingClient()
    calls = []
    client.forward_backward = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    ctx = Context(spec=spec, adapters=Adapters(client, None), bus=EventBus(), run_dir=Path("."))  # type: ignore[arg-type]
    steps = []
    ctx.bus.listen(lambda e: steps.append(e.data) if e.name == ev.TRAINING_STEP else None)
    ctx.progress.total_steps = 2
    run([loop("s", over=lambda c: range(2), body=[stage(lambda c: StepOutput([], metrics={"reward_mean": 1.0}))])], ctx)
    assert ctx.step == 2 and not calls
    assert [(s["step"], s["loss"], s["reward_mean"]) for s in steps] == [(1, 0.0, 1.0), (2, 0.0, 1.0)]


def test_the_optimizer_is_the_workflow_configs_not_the_engines():
    """The pipeline asks the run spec's optimizer() once and sends its values with each step's
    scheduled learning rate: a workflow schema that overrides optimizer() trains with its own."""
    from kitchen.adapters.noop import NoopTrainingClient
    from kitchen.config.spec import RunSpec
    from kitchen.engine.pipeline import StepOutput
    from kitchen.ports.types import AdamParams, Datum, OptimizerSpec

    class HeavyDecay(RunSpec):  # a plugin workflow's schema choosing its own optimizer settings
        def optimizer(self) -> OptimizerSpec:
            return OptimizerSpec(beta1=0.5, beta2=0.9, eps=1e-6, weight_decay=0.25, grad_clip_norm=2.0)

    from kitchen.runs.preflight import compose_spec

    composed = compose_spec(["recipe=sl_basic", "adapters=noop", "beta1=0.8", "eps=1e-7"])[0]
    assert composed.optimizer() == OptimizerSpec(beta1=0.8, eps=1e-7, grad_clip_norm=1.0)  # RunSpec's: AdamW from its keys
    keys = composed.model_dump() | {"learning_rate": 2e-3, "lr_schedule": "constant", "warmup_steps": 0, "pipeline_depth": 0}
    spec = HeavyDecay.model_validate({k: v for k, v in keys.items() if k in HeavyDecay.model_fields})
    client = NoopTrainingClient()
    sent: list[AdamParams] = []
    real = client.optim_step
    client.optim_step = lambda params: (sent.append(params), real(params))[1]  # type: ignore[method-assign]
    ctx = Context(spec=spec, adapters=Adapters(client, None), bus=EventBus(), run_dir=Path("."))  # type: ignore[arg-type]
    ctx.progress.total_steps = 2
    datum = Datum([1, 2, 3], {"target_tokens": [2, 3, 4], "weights": [0.0, 1.0, 1.0]})
    run([loop("s", over=lambda c: range(2), body=[stage(lambda c: StepOutput([datum], "cross_entropy"))])], ctx)
    assert sent == [AdamParams(learning_rate=2e-3, beta1=0.5, beta2=0.9, eps=1e-6, weight_decay=0.25, grad_clip_norm=2.0)] * 2


@pytest.mark.parametrize("backend", ["noop", "local"])
def test_a_backend_refuses_an_optimizer_it_does_not_run_before_any_step(backend):
    """A workflow that asks for another optimizer is told at session start, naming what the backend runs."""
    from kitchen.ports.types import OptimizerSpec, SessionConfig

    if backend == "noop":
        from kitchen.adapters.noop import NoopTrainingClient as Client
    else:
        pytest.importorskip("torch")
        from kitchen.adapters.local import LocalTrainingClient as Client
    with pytest.raises(ConfigError) as err:
        Client().start_session(SessionConfig(base_model="tiny-llama", optimizer=OptimizerSpec(kind="lion")))
    assert "'lion'" in str(err.value) and f"the {backend} backend" in str(err.value) and "It runs: adamw" in str(err.value)
