"""The Stage contract and the stage registry.

A stage is thin: it reads the context, calls a port or a domain function, and writes
the context. ``validate`` runs before the workflow starts (fail before loading a
model); ``rollback`` runs, newest first, for completed stages when the workflow fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

from kitchen.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from kitchen.engine.context import Context


class Stage:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def validate(self, ctx: "Context") -> None:
        """Raise a KitchenError if this stage cannot run with this spec."""

    def execute(self, ctx: "Context") -> None:
        raise NotImplementedError

    def rollback(self, ctx: "Context", error: BaseException) -> None:
        """Undo side effects after a later failure. Default: nothing to undo."""

    @classmethod
    def has_rollback(cls) -> bool:
        return cls.rollback is not Stage.rollback


_STAGES: dict[str, type[Stage]] = {}
S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    def decorate(cls: S) -> S:
        cls.name = name
        _STAGES[name] = cls
        return cls

    return decorate


def get_stage(name: str) -> type[Stage]:
    _load_builtins()
    try:
        return _STAGES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown stage '{name}'.{did_you_mean(name, list(_STAGES))} "
            f"Registered stages: {', '.join(sorted(_STAGES))}."
        ) from None


def stage_names() -> list[str]:
    _load_builtins()
    return sorted(_STAGES)


def _load_builtins() -> None:
    import kitchen.stages  # noqa: F401  (registers the built-in stages)
