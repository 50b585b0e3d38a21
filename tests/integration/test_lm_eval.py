"""lm-evaluation-harness in kitchen: the in-training evaluator and `kitchen eval`, checked
against lm-eval's own HF model class on the same weights (tiny local model, offline task)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import assert_completed, evals_of, read_jsonl, run_kitchen

pytest.importorskip("lm_eval")

TASK = "kitchen_arith"
TINY = ("recipe=sl_basic", "adapters=local", "model=tiny-llama", "precision=fp32", "learning_rate=5e-2",
        "lr_schedule=constant", "num_preview_samples=0", "telemetry=jsonl", "max_length=128", "eval_every=3", "save_every=3")
EVALUATOR = f"evaluators=[{{lm_eval:{{tasks:[{TASK}]}}}}]"
BUNDLED = Path(__file__).parents[2] / "kitchen" / "evaluators" / "lm_eval_tasks" / "kitchen_arith.yaml"


def direct_scores(weights: Path, limit: int | None = None) -> dict[str, float]:
    """lm-eval on its own: `--model hf` loading the exported directory, no kitchen code in between."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(weights), "device": "cpu", "dtype": "float32"},
        tasks=[TASK], task_manager=TaskManager(include_path=str(BUNDLED.parent), include_defaults=False),
        limit=limit, batch_size=4, log_samples=False)
    values = results["results"][TASK]
    return {"acc": values["acc,none"], "acc_norm": values["acc_norm,none"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("lm_eval") / "run"
    r = run_kitchen("run", *TINY, "max_steps=6", EVALUATOR, f"run_dir={run_dir}")
    assert r.code == 0, r
    return run_dir


def test_the_evaluator_scores_every_eval_and_matches_lm_eval_on_the_final_weights(run: Path) -> None:
    assert_completed(run, 6)
    evals = {e["step"]: e for e in evals_of(run)}
    assert sorted(evals) == [0, 3, 6]
    for e in evals.values():
        for metric in ("acc", "acc_norm"):
            value = e[f"lm_eval/{TASK}/{metric}"]
            assert 0.0 <= value <= 1.0 and math.isfinite(value)
            assert round(value * 20) == pytest.approx(value * 20)  # a share of the task's 20 questions
    # the metrics reach the sinks' file and run.json
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("split") == "test"]
    assert {r["step"] for r in rows if f"lm_eval/{TASK}/acc" in r} == {0, 3, 6}
    info = json.loads((run / "run.json").read_text())
    assert f"lm_eval/{TASK}/acc" in json.dumps(info)
    # the score kitchen computed through its training client is lm-eval's own on the exported weights
    final = direct_scores(run / "final")
    assert evals[6][f"lm_eval/{TASK}/acc"] == pytest.approx(final["acc"])
    assert evals[6][f"lm_eval/{TASK}/acc_norm"] == pytest.approx(final["acc_norm"])


def test_kitchen_eval_scores_a_runs_final_a_checkpoint_and_its_base(run: Path) -> None:
    evals = {e["step"]: e for e in evals_of(run)}
    r = run_kitchen("eval", str(run), "--tasks", TASK)
    assert r.code == 0, r
    assert TASK in r.out and "acc" in r.out  # lm-eval's table
    written = json.loads((run / "evals" / "lm_eval-final.json").read_text())
    assert written["results"][TASK]["acc,none"] == pytest.approx(evals[6][f"lm_eval/{TASK}/acc"])
    assert "acc_stderr,none" in written["results"][TASK]  # the full results, standard errors included

    r = run_kitchen("eval", str(run), "--tasks", TASK, "--step", "3")
    assert r.code == 0, r
    step3 = json.loads((run / "evals" / "lm_eval-step_3.json").read_text())["results"][TASK]
    assert step3["acc,none"] == pytest.approx(evals[3][f"lm_eval/{TASK}/acc"])
    assert step3["acc_norm,none"] == pytest.approx(evals[3][f"lm_eval/{TASK}/acc_norm"])

    r = run_kitchen("eval", str(run), "--tasks", TASK, "--base")
    assert r.code == 0, r
    base = json.loads((run / "evals" / "lm_eval-base.json").read_text())["results"][TASK]
    assert base["acc,none"] == pytest.approx(evals[0][f"lm_eval/{TASK}/acc"])


def test_kitchen_eval_of_a_model_name_with_a_limit_and_a_task_file(tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    r = run_kitchen("eval", "tiny-llama", "--tasks", str(BUNDLED), "--limit", "5", "--output", str(out))
    assert r.code == 0, r
    data = json.loads(out.read_text())
    assert data["limit"] == 5 and data["model"] == "tiny-llama"
    assert 0.0 <= data["results"][TASK]["acc,none"] <= 1.0


def test_bad_tasks_and_options_are_one_paragraph_each(tmp_path: Path) -> None:
    r = run_kitchen("eval", "tiny-llama", "--tasks", "kitchen_arithm")
    assert r.code == 2 and "no task 'kitchen_arithm'" in r.err and "kitchen_arith" in r.err and "Traceback" not in r.err
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: x\n  doc_to_text: [unclosed\n")
    r = run_kitchen("eval", "tiny-llama", "--tasks", str(broken))
    assert r.code == 2 and "does not parse as YAML" in r.err and "line" in r.err, r
    r = run_kitchen("validate", *TINY, "evaluators=[{lm_eval:{tasks:[no_such_task_anywhere]}}]")
    assert r.code == 2 and "no task 'no_such_task_anywhere'" in r.err, r
    r = run_kitchen("validate", *TINY, f"evaluators=[{{lm_eval:{{tasks:[{TASK}],limit:0}}}}]")
    assert r.code == 2 and "limit is 0" in r.err, r
    r = run_kitchen("validate", *TINY, f"evaluators=[{{lm_eval:{{tasks:[{TASK}],shots:2}}}}]")
    assert r.code == 2 and "no option shots" in r.err, r
    r = run_kitchen("eval", "tiny-llama", "--tasks", TASK, "--step", "2")
    assert r.code == 2 and "--step and --base choose weights of a run directory" in r.err, r


def test_an_evaluator_that_fails_mid_run_is_dropped_and_training_goes_on(tmp_path: Path) -> None:
    """A task whose data loader breaks passes validation (it loads at evaluation time), warns once, and
    the run completes with the workflow's own evaluation intact."""
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "loader.py").write_text("def load(**_):\n    raise RuntimeError('the benchmark server is down')\n")
    (task_dir / "flaky.yaml").write_text(BUNDLED.read_text().replace("task: kitchen_arith", "task: flaky_arith")
                                        .replace("local_jsonl.load", "loader.load"))
    run_dir = tmp_path / "run"
    r = run_kitchen("run", *TINY, "max_steps=3", f"evaluators=[{{lm_eval:{{tasks:[{task_dir / 'flaky.yaml'}]}}}}]",
                    f"run_dir={run_dir}")
    assert r.code == 0, r
    assert_completed(run_dir, 3)
    warnings = [e["message"] for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "run.warning"
                and "evaluator lm_eval" in e["message"]]
    assert len(warnings) == 1 and "failed at step 0" in warnings[0] and "the benchmark server is down" in warnings[0]
    evals = evals_of(run_dir)
    assert [e["step"] for e in evals] == [0, 3] and all("test_nll" in e for e in evals)


def test_port_lm_answers_as_lm_evals_hf_model_does() -> None:
    """Request by request: kitchen's model over its ports vs lm-eval's HFLM on the same weights."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from kitchen.adapters.local.client import LocalTrainingClient
    from kitchen.adapters.local.merge import merged_copy
    from kitchen.evaluators.lm_eval import port_lm
    from kitchen.ports.types import SessionConfig

    client = LocalTrainingClient()
    client.start_session(SessionConfig(base_model="tiny-llama", dtype="float32", device="cpu", precision="fp32"))
    tok = client.get_tokenizer()
    hf = HFLM(pretrained=merged_copy(client.train_session()), tokenizer=tok, batch_size=2, device="cpu")
    ours = port_lm(client, tok, client.sampling_client(), batch_size=2, max_length=hf.max_length, seed=0, greedy_tasks=["t"])

    pairs = [("Question: What is 2 + 2?\nAnswer:", " 4"), ("The cat sat on the", " mat"), ("ab ", "cd ef")]
    reqs = [Instance("loglikelihood", {}, p, i, ("t", i, 1)) for i, p in enumerate(pairs)]
    theirs, mine = hf.loglikelihood(reqs), ours.loglikelihood(reqs)
    for (lp_h, greedy_h), (lp_k, greedy_k) in zip(theirs, mine):
        assert lp_k == pytest.approx(lp_h, abs=1e-4)
        assert greedy_k == greedy_h
    rolling = [Instance("loglikelihood_rolling", {}, ("a long text " * 30,), 0, ("r", 0, 1))]
    assert ours.loglikelihood_rolling(rolling)[0] == pytest.approx(hf.loglikelihood_rolling(rolling)[0], rel=1e-4)
    gen = [Instance("generate_until", {}, ("Once upon a time", {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}), 0,
                    ("g", 0, 1))]
    assert ours.generate_until(gen) == hf.generate_until(gen)


def test_an_evaluation_leaves_the_global_random_state_alone() -> None:
    """lm-eval seeds the global RNGs; kitchen puts them back, so a mid-run evaluation changes no later draw."""
    import random

    import numpy as np
    import torch

    from kitchen.evaluators.lm_eval import global_rng_kept

    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    with global_rng_kept():
        torch.manual_seed(1234)
        random.seed(0)
        np.random.seed(1234)
        torch.rand(7)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
