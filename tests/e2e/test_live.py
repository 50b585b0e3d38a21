"""Live smoke tests against the real services: each trains two steps, skipped without credentials.

`make test-live` runs them. They cost money (a Modal GPU for a few minutes), so nothing
runs them unless the user's own credentials are in the environment.
"""

from __future__ import annotations

import os

import pytest

from conftest import assert_completed, step_losses

pytestmark = pytest.mark.live

TWO_STEPS = ("recipe=sl_basic", "max_steps=2", "batch_size=4", "eval_every=0", "save_every=2",
             "num_preview_samples=0", "telemetry=jsonl")


@pytest.mark.skipif(not os.environ.get("MODAL_TOKEN_ID"), reason="needs MODAL_TOKEN_ID / MODAL_TOKEN_SECRET (a Modal account)")
def test_modal_trains_two_steps_on_a_real_gpu(kitchen, tmp_path):
    pytest.importorskip("modal")
    run_dir = tmp_path / "modal-live"
    gpu = os.environ.get("KITCHEN_LIVE_MODAL_GPU", "T4")
    r = kitchen("run", *TWO_STEPS, "adapters=modal", f"adapters.training.gpu={gpu}", "adapters.training.timeout_s=1800",
                f"run_dir={run_dir}", timeout=1800)
    assert r.code == 0, r
    losses = step_losses(run_dir)
    assert sorted(losses) == [1, 2] and all(v == v and v > 0 for v in losses.values())
    assert_completed(run_dir, 2)
