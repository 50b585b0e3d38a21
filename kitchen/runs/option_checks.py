"""Options that ``kitchen run`` would refuse late, checked in preflight instead.

Each of these used to pass ``kitchen validate`` and then fail the run: a mirror URL whose
fsspec backend is not installed died at the first checkpoint, ``push_to_hub`` with the hub
offline trained to the end and then marked the run failed, and a batch that does not split
over the launched ranks failed only once the launcher ran. The paragraphs are the ones the
run gives.
"""

from __future__ import annotations

import os
from typing import Any

from kitchen.errors import ConfigError

_TRUE = {"1", "on", "yes", "true"}


def check_mirror_url(url: str | None) -> None:
    """``checkpoint_mirror`` must name a folder or a URL whose fsspec protocol is installed."""
    if not url or "://" not in url or url.startswith("file://"):
        return
    from kitchen.adapters.blobs import check_remote_url

    check_remote_url(url)


def check_push_online(repo: str | None) -> None:
    if repo and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise ConfigError(
            f"push_to_hub={repo} cannot upload: HF_HUB_OFFLINE is set, so the hub is unreachable by choice and the push "
            "would fail after training. Unset HF_HUB_OFFLINE, or drop push_to_hub and push later with "
            "`kitchen export RUN_DIR --out DIR --push ORG/NAME`."
        )


def check_run_options(spec: Any) -> None:
    check_mirror_url(spec.checkpoint_mirror)
    check_push_online(spec.push_to_hub)
    from kitchen.runs.distributed import check_batch_split  # the world size must divide batch_size

    check_batch_split(spec)


__all__ = ["check_mirror_url", "check_push_online", "check_run_options"]
