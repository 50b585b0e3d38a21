"""Every config mistake gets one paragraph on stderr, exit code 2, and no traceback."""

from __future__ import annotations

import json

import pytest

NOOP = ("adapters=noop", "telemetry=jsonl")


def assert_user_error(r, *needles: str) -> None:
    assert r.code == 2, r
    assert "Traceback" not in r.text, r
    assert r.err.strip().startswith("error:"), r
    for needle in needles:
        assert needle in r.err, (needle, r)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["recipe=nope"], ["Unknown recipe 'nope'", "sl_basic"]),
        (["recipe=sl_basik"], ["Did you mean 'sl_basic'?"]),
        (["learnin_rate=3e-4"], ["Unknown key 'learnin_rate'", "Did you mean 'learning_rate'?"]),
        (["+learnin_rate=3e-4"], ["unknown key 'learnin_rate'", "Did you mean 'learning_rate'?"]),
        (["learning_rate=abc"], ["learning_rate", "'abc'", "valid number"]),
        (["batch_size=0"], ["batch_size", "greater than 0"]),
        (["max_steps=-5"], ["max_steps", "greater than 0"]),
        (["epochs=0"], ["epochs"]),
        (["adapters=nope"], ["Unknown adapters choice 'nope'", "local", "noop", "tinker"]),
        (["telemetry=loud"], ["Unknown telemetry choice 'loud'", "jsonl"]),
        (["workflow=superviced"], ["Unknown workflow choice 'superviced'", "Did you mean 'supervised'?"]),
        (["lr_schedule=wavy"], ["lr_schedule", "wavy", "cosine"]),
        (["dataset=/nonexistent/train.jsonl"], ["/nonexistent/train.jsonl"]),
    ],
)
def test_config_mistakes(kitchen, tmp_path, overrides, needles):
    r = kitchen("run", *NOOP, *overrides, f"run_dir={tmp_path / 'x'}")
    assert_user_error(r, *needles)
    assert not (tmp_path / "x" / "run.json").exists()


def test_validate_reports_the_same_mistakes(kitchen):
    assert_user_error(kitchen("validate", "batch_size=0"), "batch_size")
    assert_user_error(kitchen("validate", "adapters=noop", "dataset=/missing.jsonl"), "/missing.jsonl")


def test_malformed_jsonl_line_names_the_line(kitchen, tmp_path):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    data.write_text("\n".join([good, good, '{"messages": [ oops', good]) + "\n")
    r = kitchen("run", *NOOP, f"dataset={data}", f"run_dir={tmp_path / 'x'}")
    assert_user_error(r, str(data), "line 3")


def test_row_without_messages_names_the_row(kitchen, tmp_path):
    data = tmp_path / "rows.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"text": "no messages here"}) + "\n")
    r = kitchen("run", *NOOP, f"dataset={data}", "~test_dataset", f"run_dir={tmp_path / 'x'}")
    assert_user_error(r, "line 2", "field messages")


def test_malformed_recipe_yaml_names_file_and_line(kitchen, tmp_path):
    (tmp_path / "broken.yaml").write_text("# @package _global_\nmodel: tiny\nlearning_rate: [1e-4\nbatch_size: 4\n")
    r = kitchen("run", "recipe=broken", "--recipes-dir", str(tmp_path))
    assert_user_error(r, "broken.yaml", "line")


def test_recipe_with_unknown_key_names_the_recipe_file(kitchen, tmp_path):
    (tmp_path / "typo.yaml").write_text("# @package _global_\ndefaults:\n  - override /adapters: noop\nlearing_rate: 1e-4\n")
    r = kitchen("run", "recipe=typo", "--recipes-dir", str(tmp_path))
    assert_user_error(r, "typo.yaml", "learing_rate", "Did you mean 'learning_rate'?")


def test_recipe_naming_unknown_workflow(kitchen, tmp_path):
    (tmp_path / "odd.yaml").write_text("# @package _global_\ndefaults:\n  - override /workflow: telepathy\n")
    r = kitchen("run", "recipe=odd", "--recipes-dir", str(tmp_path))
    assert_user_error(r, "Recipe 'odd'", "odd.yaml", "telepathy", "supervised")


def test_missing_recipe_dir(kitchen, tmp_path):
    r = kitchen("recipes", "--recipes-dir", str(tmp_path / "nowhere"))
    assert_user_error(r, "nowhere", "does not exist")


def test_finished_run_dir_is_refused_and_kept(kitchen, tmp_path):
    run_dir = tmp_path / "done"
    assert kitchen("run", *NOOP, "max_steps=3", f"run_dir={run_dir}").code == 0
    before = (run_dir / "metrics.jsonl").read_text()
    r = kitchen("run", *NOOP, "max_steps=3", f"run_dir={run_dir}")
    assert_user_error(r, "already holds a finished run", "resume=true", "overwrite=true")
    assert (run_dir / "metrics.jsonl").read_text() == before
    # overwrite moves the old run aside rather than deleting it
    r = kitchen("run", *NOOP, "max_steps=2", f"run_dir={run_dir}", "overwrite=true")
    assert r.code == 0, r
    moved = list(tmp_path.glob("done.old-*"))
    assert len(moved) == 1 and (moved[0] / "metrics.jsonl").read_text() == before


def test_resume_without_a_run_is_refused(kitchen, tmp_path):
    r = kitchen("run", *NOOP, f"run_dir={tmp_path / 'empty'}", "resume=true")
    assert_user_error(r, "no run to resume")


def test_debug_shows_the_traceback(kitchen, tmp_path):
    r = kitchen("--debug", "run", *NOOP, "batch_size=0", f"run_dir={tmp_path / 'x'}")
    assert r.code == 2 and "Traceback" in r.err and "batch_size" in r.err


def test_resume_of_non_run_dir(kitchen, tmp_path):
    assert_user_error(kitchen("resume", str(tmp_path)), "not a kitchen run directory")
