"""The workflow IR and the small DSL that builds it.

A workflow is a tuple of nodes. Four node kinds cover every built-in algorithm:

- ``stage("name", **options)``: run one registered stage.
- ``loop("name", over=..., body=[...])``: run ``body`` once per item of an iterable
  (a context-state key, or a function of the context), binding the item to
  ``ctx.state[var]``. Loops nest: epochs, batches, rollout groups.
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

if TYPE_CHECKING:
    from kitchen.engine.context import Context

Predicate = Callable[["Context"], bool]
Source = Union[str, Callable[["Context"], Iterable[Any]]]


@dataclass(frozen=True)
class StageNode:
    name: str
    options: tuple[tuple[str, Any], ...] = ()
    label: str | None = None

    @property
    def title(self) -> str:
        return self.label or self.name

    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class LoopNode:
    name: str
    over: Source
    body: tuple["Node", ...]
    var: str


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
    """A named, registered algorithm: its node tree plus the hyperparameters it reads."""

    name: str
    description: str
    nodes: tuple[Node, ...]
    params: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- DSL


def stage(name: str, label: str | None = None, **options: Any) -> StageNode:
    return StageNode(name, tuple(sorted(options.items())), label)


def loop(name: str, over: Source, body: Sequence[Node], var: str | None = None) -> LoopNode:
    return LoopNode(name, over, tuple(body), var or name)


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


def when(key: str) -> Predicate:
    """True when the hyperparameter (or state flag) ``key`` is truthy."""

    def predicate(ctx: "Context") -> bool:
        return bool(ctx.state.get(key, getattr(ctx.spec, key, None)))

    predicate.label = f"if {key}"  # type: ignore[attr-defined]
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
