"""``TrainOnWhat``: which tokens of a conversation carry loss weight 1.0, defined once.

The enum is what the renderers and the row checks compare against; the recipe schema
(``kitchen.config.spec``) types its ``train_on_what`` key with :data:`TrainOnWhatName`,
the Literal of the same values, so a recipe still gives (and run.json still records) a
plain string and a wrong one gets the same error as before.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from kitchen.errors import ConfigError, did_you_mean


class TrainOnWhat(str, Enum):
    """Which tokens of a conversation carry loss weight 1.0."""

    LAST_ASSISTANT_MESSAGE = "last_assistant_message"
    ALL_ASSISTANT_MESSAGES = "all_assistant_messages"
    ALL_MESSAGES = "all_messages"
    ALL_TOKENS = "all_tokens"

    def __str__(self) -> str:  # so f-strings and YAML dumps show the plain value
        return self.value


TRAIN_ON_WHAT: tuple[str, ...] = tuple(t.value for t in TrainOnWhat)

# The same values as a Literal, for the pydantic schema (``Literal[(a, b)]`` is ``Literal[a, b]``).
TrainOnWhatName = Literal[TRAIN_ON_WHAT]  # type: ignore[valid-type]


def parse_train_on_what(value: str | TrainOnWhat) -> TrainOnWhat:
    """``value`` as a :class:`TrainOnWhat`, or ConfigError listing the allowed values."""
    if isinstance(value, TrainOnWhat):
        return value
    try:
        return TrainOnWhat(str(value))
    except ValueError:
        raise ConfigError(
            f"Unknown train_on_what {value!r}; allowed values: {', '.join(TRAIN_ON_WHAT)}."
            + did_you_mean(str(value), TRAIN_ON_WHAT)
        ) from None
