"""User-facing errors.

A ``KitchenError`` is a mistake the user can fix (bad config, missing file, unsafe
run dir). The CLI prints its message as one paragraph and exits with code 2, with no
traceback unless ``--debug``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class KitchenError(Exception):
    """A problem in the user's input, explained in one paragraph."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message.strip()
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigError(KitchenError):
    """The composed config or a recipe is invalid."""


class DataError(KitchenError):
    """A dataset file is missing or malformed."""


class RunDirError(KitchenError):
    """The run directory is in a state we refuse to overwrite."""


class BackendError(KitchenError):
    """A backend refused the job in a way the user can fix (auth, model not found)."""


class TrainingDiverged(KitchenError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean X?' suffix, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
