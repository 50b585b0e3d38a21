"""The interpreter: walks a workflow's nodes over a Context.

Overhead matters (a 10,000-step noop run must spend at most ~50 µs/step here), so
stages are built once, when the workflow is defined; stage start/stop events are
emitted only for stages outside loops, and the time spent in each looped stage is
accumulated into ``ctx.progress.stage_time`` instead of being announced per call. A
stage that returns a :class:`~kitchen.engine.pipeline.StepOutput` has it submitted to
the context's step pipeline.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from kitchen.engine.context import Context
from kitchen.engine.ir import ConditionalNode, LoopNode, Node, ParallelNode, StageNode, Workflow, walk
from kitchen.engine.stage import Stage
from kitchen.telemetry import events as ev


class StopRun(Exception):
    """Raised by the runner when a graceful stop (Ctrl-C) was requested."""


class Runner:
    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self._completed: list[Stage] = []
        self._timing: dict[str, float] = {}
        self._undoable = {id(n.stage) for n in walk(workflow.nodes) if n.stage.has_rollback()}

    def validate(self, ctx: Context) -> None:
        """Run every stage's ``validate`` (once per stage instance) before anything executes."""
        seen: set[int] = set()
        for node in walk(self.workflow.nodes):
            if id(node.stage) not in seen:
                seen.add(id(node.stage))
                node.stage.validate(ctx)

    def run(self, ctx: Context) -> None:
        """Execute the workflow; on failure roll back completed stages, newest first."""
        self._timing = ctx.progress.stage_time
        try:
            self._run_nodes(self.workflow.nodes, ctx, "", depth=0)
        except BaseException as exc:
            for inst in reversed(self._completed):
                try:
                    inst.rollback(ctx, exc)
                except Exception as rb_exc:  # noqa: BLE001 - report, keep rolling back
                    ctx.emit(ev.RUN_WARNING, message=f"rollback of stage {inst.name} failed: {rb_exc}")
            raise

    # -- node kinds ---------------------------------------------------------------

    def _run_nodes(self, nodes: Iterable[Node], ctx: Context, path: str, depth: int) -> None:
        for node in nodes:
            if ctx.stop_requested:
                raise StopRun()
            if isinstance(node, StageNode):
                self._run_stage(node, ctx, path, depth)
            elif isinstance(node, LoopNode):
                self._run_loop(node, ctx, path, depth)
            elif isinstance(node, ConditionalNode):
                branch = node.then if node.predicate(ctx) else node.otherwise
                if branch:
                    self._run_nodes(branch, ctx, path, depth)
            elif isinstance(node, ParallelNode):
                self._run_parallel(node, ctx, path, depth)
            else:  # pragma: no cover - the IR is closed
                raise TypeError(f"unknown workflow node {node!r}")

    def _run_stage(self, node: StageNode, ctx: Context, path: str, depth: int) -> None:
        inst = node.stage
        title = node.title
        if depth == 0:
            ctx.emit(ev.STAGE_START, stage=title, path=f"{path}/{title}" if path else title, step=ctx.step)
        t0 = time.perf_counter()
        try:
            output = inst.execute(ctx)
            if output is not None:
                ctx.pipeline.submit(output)
        except (StopRun, KeyboardInterrupt):
            raise
        except BaseException as exc:
            where = f"{path}/{title}" if path else title
            ctx.emit(ev.STAGE_EXCEPTION, stage=title, path=where, step=ctx.step, error=str(exc), type=type(exc).__name__)
            raise
        elapsed = time.perf_counter() - t0
        if depth == 0:
            ctx.emit(ev.STAGE_STOP, stage=title, path=f"{path}/{title}" if path else title, step=ctx.step, duration_s=elapsed)
        else:
            timing = self._timing
            timing[title] = timing.get(title, 0.0) + elapsed
        if self._undoable and id(inst) in self._undoable:
            self._completed.append(inst)

    def _run_loop(self, node: LoopNode, ctx: Context, path: str, depth: int) -> None:
        where = f"{path}/{node.name}" if path else node.name
        for _ in node.over(ctx):
            self._run_nodes(node.body, ctx, where, depth + 1)
            if ctx.stop_requested:
                raise StopRun()

    def _run_parallel(self, node: ParallelNode, ctx: Context, path: str, depth: int) -> None:
        where = f"{path}/{node.label}" if path else node.label
        workers = max(1, min(node.max_concurrency, len(node.branches)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kitchen-parallel") as pool:
            futures = [pool.submit(self._run_nodes, branch, ctx, where, depth + 1) for branch in node.branches]
            errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err
