"""lm-eval on the real SmolLM2 (slow): the in-training evaluator and `kitchen eval` give
lm-eval's own score for the same weights (its `--model hf` on the run's final/ dir)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import evals_of, run_kitchen

pytestmark = pytest.mark.slow
pytest.importorskip("lm_eval")

TASK = "kitchen_arith"
TASKS = Path(__file__).parents[2] / "kitchen" / "evaluators" / "lm_eval_tasks"


def test_smollm2_lm_eval_scores_match_lm_eval_on_the_final_weights(tmp_path: Path) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    run = tmp_path / "run"
    r = run_kitchen("run", "recipe=sl_basic", "max_steps=2", "batch_size=2", "eval_every=2", "save_every=0",
                    "num_preview_samples=0", "~test_dataset", "precision=fp32", "telemetry=jsonl",
                    f"evaluators=[{{lm_eval:{{tasks:[{TASK}]}}}}]", f"run_dir={run}", timeout=1200)
    assert r.code == 0, r
    final_eval = [e for e in evals_of(run) if e["step"] == 2][0]
    direct = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(run / "final"), "device": "cpu", "dtype": "float32"},
        tasks=[TASK], task_manager=TaskManager(include_path=str(TASKS), include_defaults=False), batch_size=4,
        log_samples=False)["results"][TASK]
    assert final_eval[f"lm_eval/{TASK}/acc"] == pytest.approx(direct["acc,none"])
    assert final_eval[f"lm_eval/{TASK}/acc_norm"] == pytest.approx(direct["acc_norm,none"])

    r = run_kitchen("eval", str(run), "--tasks", TASK, timeout=900)
    assert r.code == 0, r
    written = json.loads((run / "evals" / "lm_eval-final.json").read_text())["results"][TASK]
    assert written["acc,none"] == pytest.approx(direct["acc,none"])
    assert written["acc_norm,none"] == pytest.approx(direct["acc_norm,none"])
