"""One preflight: `kitchen validate` rejects every input `kitchen run` rejects, with the same
paragraph, and no invalid input leaves a directory behind (the run dir or Hydra's)."""

from __future__ import annotations

import json

import pytest

NOOP = ("adapters=noop", "telemetry=jsonl")
ROWS = {
    "no_conversation.jsonl": [{"question": "a row in no format kitchen knows", "id": 3}],
    "no_assistant.jsonl": [{"messages": [{"role": "user", "content": "hi"}]}],
    "bad_role.jsonl": [{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
    "pairs_missing.jsonl": [{"prompt": "hi", "chosen": "yes"}],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("badrows")
    for name, rows in ROWS.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# (overrides, what the one paragraph must name)
CATALOG = [
    (["learnin_rate=3e-4"], ["learnin_rate", "Did you mean 'learning_rate'?"]),
    (["dpo_beta=0.2"], ["dpo_beta", "'preference' workflow", "dpo_basic"]),
    (["+dpo_beta=0.2"], ["dpo_beta", "'preference' workflow"]),
    (["recipe=rl_basic", "batch_size=4"], ["batch_size", "'supervised'", "'reinforcement'"]),
    (["batch_size=0"], ["batch_size", "greater than 0"]),
    (["dataset={data}/no_conversation.jsonl"], ["no_conversation.jsonl", "question"]),
    (["dataset={data}/no_assistant.jsonl", "~test_dataset"], ["no_assistant.jsonl", "row 0", "assistant"]),
    (["dataset={data}/bad_role.jsonl", "~test_dataset"], ["bad_role.jsonl", "wizard"]),
    (["test_dataset={data}/no_conversation.jsonl"], ["no_conversation.jsonl", "question"]),
    (["recipe=dpo_basic", "dataset={data}/pairs_missing.jsonl", "~test_dataset"], ["pairs_missing.jsonl", "rejected"]),
    (["recipe=rl_basic", "env=arithmatic"], ["arithmatic", "Did you mean 'arithmetic'?"]),
    (["recipe=rl_basic", "~max_steps"], ["max_steps"]),
    (["renderer=chatml"], ["renderer 'chatml'", "role_colon"]),
    (["evaluators=[nope]"], ["evaluator 'nope'", "greedy_preview"]),
    (["evaluators=[{_target_: no.such.Module}]"], ["no.such.Module"]),
    (["telemetry.sinks=[console,slack]"], ["sink 'slack'", "jsonl"]),
    (["adapters=tinker"], ["TINKER_API_KEY"]),
    (["adapters=tinker", "lora_rank=0"], ["lora rank 0"]),
    (["adapters=local", "model=no-such-org/no-such-model"], ["no-such-org/no-such-model"]),
    # the adapters' local_models declaration, not their name, makes validate resolve the model
    (["adapters=noop", "adapters.local_models=true", "model=no-such-org/no-such-model"], ["no-such-org/no-such-model"]),
    (["workflow=superviced"], ["Unknown workflow choice 'superviced'", "Did you mean 'supervised'?"]),
]


@pytest.mark.parametrize(("overrides", "needles"), CATALOG, ids=[" ".join(o) for o, _ in CATALOG])
def test_validate_rejects_what_run_rejects_and_nothing_is_written(kitchen, tmp_path, data, overrides, needles):
    overrides = [o.replace("{data}", str(data)) for o in overrides]
    env = {"TINKER_API_KEY": "" if "TINKER_API_KEY" in needles else "tml-test-key", "HF_HUB_OFFLINE": "1"}
    adapters = () if any(o.startswith("adapters=") for o in overrides) else NOOP[:1]
    args = (*adapters, NOOP[1], *overrides, f"run_dir={tmp_path / 'run'}")
    validated = kitchen("validate", *args, env=env, cwd=tmp_path)
    ran = kitchen("run", *args, env=env, cwd=tmp_path)
    for r in (validated, ran):
        assert r.code == 2 and "Traceback" not in r.text and r.err.strip().startswith("error:"), r
        for needle in needles:
            assert needle in r.err, (needle, r)
    assert validated.err == ran.err  # the same paragraph: one preflight
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "an invalid input left files behind"


def test_validate_ok_means_the_run_gets_going(kitchen, tmp_path):
    r = kitchen("validate", *NOOP, "max_steps=2", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.code == 0 and r.out.startswith("ok:") and "dataset: 300 train rows" in r.out, r
    assert not (tmp_path / "run").exists()
    assert kitchen("run", *NOOP, "max_steps=2", f"run_dir={tmp_path / 'run'}", cwd=tmp_path).code == 0


def test_a_bad_sweep_value_fails_before_hydra_makes_the_sweep_dir(kitchen, tmp_path):
    r = kitchen("run", "-m", *NOOP, "max_steps=2", "batch_size=4,0", cwd=tmp_path)
    assert r.code == 2 and "batch_size" in r.err and "Traceback" not in r.text, r
    assert not (tmp_path / "multirun").exists()


def test_python_facade_runs_validates_and_raises_the_cli_paragraph(tmp_path, monkeypatch):
    import kitchen
    from kitchen.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    result = kitchen.run("sl_basic", overrides=[*NOOP, "max_steps=3", "~test_dataset", f"run_dir={tmp_path / 'r'}"])
    assert result.status == "completed" and result.step == 3 and result.run_dir == str(tmp_path / "r")
    assert result.metrics["loss"] > 0
    assert "sl_basic" in kitchen.recipes()
    described = kitchen.describe("dpo_basic")
    assert described.workflow.name == "preference" and "dpo_beta" in [k[0] for k in described.keys]
    assert kitchen.validate("rl_basic", overrides=[NOOP[0]]).max_steps == 24
    with pytest.raises(ConfigError, match="belongs to the 'preference' workflow"):
        kitchen.validate("sl_basic", overrides=[NOOP[0], "dpo_beta=0.3"])
