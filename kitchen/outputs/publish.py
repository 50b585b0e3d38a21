"""What happens to ``final/`` once it is written: model cards, then ``push_to_hub``.

Kept out of the stages so the engine refactor only has to call :func:`finish_final`.
The push runs last, after every file is on disk: a push that fails (no network,
``HF_HUB_OFFLINE``, no token) raises a :class:`BackendError` that says the weights are
intact and how to push them later, so nothing is lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kitchen.outputs.model_card import write_cards
from kitchen.telemetry import events as ev


def finish_final(ctx: Any, where: str) -> None:
    spec = ctx.spec.model_dump(mode="json")
    session = ctx.record.session
    metrics = {k: v for k, v in ctx.metrics.items() if isinstance(v, (int, float))}
    if (Path(where) / "config.json").is_file():
        write_cards(where, spec=spec, base=session.get("base"), metrics=metrics,
                    data_stats=ctx.record.data_stats_fields(), step=ctx.step)
    repo = ctx.spec.push_to_hub
    if repo:
        url = push(where, repo)
        ctx.record.pushed_to = url
        ctx.emit(ev.RUN_INFO, message=f"pushed {where} to the hub: {url}")


def push(local_dir: str, repo_id: str) -> str:
    from kitchen.adapters.hf_hub import HFHubClient

    return HFHubClient().upload(local_dir, repo_id)
