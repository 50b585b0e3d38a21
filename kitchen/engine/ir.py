"""The workflow IR and the small DSL that builds it.

A workflow is a tuple of nodes. Four node kinds cover every built-in algorithm:

- ``stage(StageClass, **options)``: run one stage (a Stage class with its typed options,
  a Stage instance, or a function of the context). Stages are values, never names.
- ``loop("name", over=fn, body=[...])``: run ``body`` once per item ``fn(ctx)`` yields.
  The source binds the current item into typed state itself (``epochs`` sets
  ``ctx.progress.epoch``), so nothing travels through string keys. Loops nest: epochs,
  batches, steps.
- ``conditional(pred, then=[...], otherwise=[...])``: branch on a predicate of the
  context, e.g. ``every("eval_every")``.
- ``parallel(branch, branch, ..., max_concurrency=N)``: run branches concurrently on
  threads, at most N at a time (rollouts, teacher and student passes).

Nodes are frozen dataclasses, so a workflow can be printed, compared and walked
(``kitchen describe`` draws this tree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

from kitchen.engine.stage import Stage, make_stage

if TYPE_CHECKING:
    from pydantic import BaseModel

    from kitchen.engine.context import Context

Predicate = Callable[["Context"], bool]
Source = Callable[["Context"], Iterable[Any]]


@dataclass(frozen=True, eq=False)
class StageNode:
    stage: Stage
    label: str | None = None

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class LoopNode:
    name: str
    over: Source
    body: tuple["Node", ...]


@dataclass(frozen=True)
class ConditionalNode:
    label: str
    predicate: Predicate
    then: tuple["Node", ...]
    otherwise: tuple["Node", ...] = ()


@dataclass(frozen=True)
class ParallelNode:
    branches: tuple[tuple["Node", ...], ...]
    max_concurrency: int = 4
    label: str = "parallel"


Node = Union[StageNode, LoopNode, ConditionalNode, ParallelNode]


@dataclass(frozen=True)
class Workflow:
    """A named algorithm: its node tree plus its config schema (the keys it reads).

    ``config`` is a pydantic model extending :class:`kitchen.config.spec.RunSpec`; a key
    that is not in it is an error when the run spec is built. ``source`` says where the
    workflow came from (``kitchen``, or the plugin package that provides it).
    """

    name: str
    description: str
    nodes: tuple[Node, ...]
    config: type["BaseModel"]
    source: str = field(default="kitchen", compare=False)


# ----------------------------------------------------------------------------- DSL


def stage(impl: Any, label: str | None = None, **options: Any) -> StageNode:
    """A stage node: ``impl`` is a Stage class (built here with ``options``), an instance, or a function."""
    return StageNode(make_stage(impl, options), label)


def loop(name: str, over: Source, body: Sequence[Node]) -> LoopNode:
    if not callable(over):
        raise TypeError(f"loop {name!r}: over= must be a function of the context that yields the items")
    return LoopNode(name, over, tuple(body))


def conditional(predicate: Predicate, then: Sequence[Node], otherwise: Sequence[Node] = (), label: str | None = None) -> ConditionalNode:
    text = label or getattr(predicate, "label", None) or getattr(predicate, "__name__", "condition")
    return ConditionalNode(text, predicate, tuple(then), tuple(otherwise))


def parallel(*branches: Sequence[Node], max_concurrency: int = 4, label: str = "parallel") -> ParallelNode:
    return ParallelNode(tuple(tuple(b) for b in branches), max_concurrency, label)


def every(key: str) -> Predicate:
    """True on optimizer steps that are multiples of the hyperparameter ``key`` (0 = never)."""

    def predicate(ctx: "Context") -> bool:
        n = getattr(ctx.spec, key)
        return bool(n) and ctx.step > 0 and ctx.step % n == 0

    predicate.label = f"every {key}"  # type: ignore[attr-defined]
    return predicate


def walk(nodes: Iterable[Node]) -> Iterable[StageNode]:
    """Every stage node in the tree, depth first (for validation and describe)."""
    for node in nodes:
        if isinstance(node, StageNode):
            yield node
        elif isinstance(node, LoopNode):
            yield from walk(node.body)
        elif isinstance(node, ConditionalNode):
            yield from walk(node.then)
            yield from walk(node.otherwise)
        elif isinstance(node, ParallelNode):
            for branch in node.branches:
                yield from walk(branch)
