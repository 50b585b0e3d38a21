"""Calling the ``datasets`` library: imported late, offline, quiet, one split chosen.

Shared by the whole-file loader (:mod:`.store`) and the streaming one (:mod:`.streaming`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from kitchen.errors import DataError, did_you_mean


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def import_datasets() -> Any:
    import datasets  # slow (~1 s): only imported when a file actually needs it

    return datasets


@contextlib.contextmanager
def offline(datasets: Any) -> Iterator[None]:
    """Force offline mode (datasets + huggingface_hub), silence progress bars and log lines.

    Module-level flags are flipped for the duration of the call and restored after, so
    other code (e.g. a hub client that may download models) keeps its own setting. Not
    thread-safe with concurrent hub calls in other threads.
    """
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, getattr(datasets.config, "HF_DATASETS_OFFLINE", None), hub_constants.HF_HUB_OFFLINE)
    try:
        from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:  # pragma: no cover - older datasets
        are_progress_bars_disabled = lambda: True  # noqa: E731
        disable_progress_bars = enable_progress_bars = lambda: None
    bars_were_off = are_progress_bars_disabled()
    ds_logging = datasets.utils.logging
    verbosity = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # our DataError says it better than their log lines
    datasets.config.HF_HUB_OFFLINE = True
    if saved[1] is not None:
        datasets.config.HF_DATASETS_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    disable_progress_bars()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved[0]
        if saved[1] is not None:
            datasets.config.HF_DATASETS_OFFLINE = saved[1]
        hub_constants.HF_HUB_OFFLINE = saved[2]
        ds_logging.set_verbosity(verbosity)
        if not bars_were_off:
            enable_progress_bars()


def pick_split(name: str, ds: Any, split: str | None, prefer: tuple[str, ...] = ("train",)) -> Any:
    """A Dataset from a Dataset or DatasetDict: the requested split, the first of ``prefer``, or the only one."""
    if not hasattr(ds, "keys"):  # already a Dataset
        return ds
    splits = list(ds.keys())
    if split is not None:
        if split in ds:
            return ds[split]
        raise DataError(f"Dataset {name} has no split '{split}'. Available splits: {', '.join(splits)}."
                        + did_you_mean(split, splits))
    for name_ in prefer:
        if name_ in ds:
            return ds[name_]
    if len(splits) == 1:
        return ds[splits[0]]
    raise DataError(f"Dataset {name} has several splits ({', '.join(splits)}); pick one with dataset_split= "
                    "(test_dataset_split= for the test set).")


__all__ = ["first_line", "import_datasets", "offline", "pick_split"]
