"""The Stage contract.

A stage is a value, not a name: a workflow passes the stage class (or an instance of
it, or a plain function) to ``stage(...)``, so go-to-definition from a workflow lands
on the stage and nothing has to be registered anywhere. Stage classes are usually
frozen dataclasses whose fields are the stage's typed options::

    @dataclass(frozen=True)
    class Evaluate(Stage):
        tag: Literal["before", "after"] | None = None

    stage(Evaluate, tag="before")     # Evaluate(tag="before"), checked when the workflow is built

A stage is thin: it reads the context, calls a port or a domain function, and writes
typed state (``ctx.use(MyState)``). ``validate`` runs before the workflow starts (fail
before loading a model or writing a file); ``rollback`` runs, newest first, for
completed stages when the workflow fails. A stage that trains returns a
:class:`~kitchen.engine.pipeline.StepOutput`; the engine's step pipeline submits it.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from kitchen.errors import ConfigError

if TYPE_CHECKING:
    from kitchen.engine.context import Context
    from kitchen.engine.pipeline import StepOutput


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])|(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Stage:
    """Base class of every stage. ``name`` defaults to the class name in snake_case."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = snake_case(cls.__name__)

    def validate(self, ctx: "Context") -> None:
        """Raise a KitchenError if this stage cannot run with this spec. Must not load weights."""

    def execute(self, ctx: "Context") -> "StepOutput | None":
        raise NotImplementedError

    def rollback(self, ctx: "Context", error: BaseException) -> None:
        """Undo side effects after a later failure. Default: nothing to undo."""

    @classmethod
    def has_rollback(cls) -> bool:
        return cls.rollback is not Stage.rollback

    @property
    def description(self) -> str:
        doc = inspect.getdoc(type(self)) or ""
        return doc.split("\n\n")[0].replace("\n", " ")


class FunctionStage(Stage):
    """A plain function ``fn(ctx, **options)`` used as a stage (no validate, no rollback)."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.fn = fn
        self.options = options
        self.name = snake_case(getattr(fn, "__name__", "stage"))  # type: ignore[misc]

    def execute(self, ctx: "Context") -> Any:
        return self.fn(ctx, **self.options)

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.split("\n\n")[0].replace("\n", " ")


def make_stage(impl: Any, options: dict[str, Any]) -> Stage:
    """A Stage instance from what a workflow wrote: a Stage class, a Stage instance or a function.

    Options are checked against the class's constructor right away, so a typo in a
    workflow is an error when the workflow is built, naming the stage and what it takes.
    """
    if isinstance(impl, Stage):
        if options:
            raise ConfigError(f"stage({type(impl).__name__}(...), ...): pass options to the class, not next to an instance.")
        return impl
    if isinstance(impl, type) and issubclass(impl, Stage):
        try:
            inspect.signature(impl).bind(**options)
        except TypeError:
            accepted = [p for p in inspect.signature(impl).parameters if p not in ("args", "kwargs")]
            raise ConfigError(
                f"Stage {impl.__module__}.{impl.__qualname__} does not take the options {sorted(options)}; "
                f"it accepts: {', '.join(accepted) or 'no options'}."
            ) from None
        return impl(**options)
    if callable(impl) and not isinstance(impl, type):
        return FunctionStage(impl, options)
    raise ConfigError(
        f"stage({impl!r}): a stage is a Stage subclass, a Stage instance or a function of the context, "
        "not a name. Import the stage and pass it (stages are values, not strings)."
    )
