"""The external cookbook (examples/cookbook): a plugin package adds a workflow, a stage, an env,
a sink and a recipe, and kitchen runs them through the real CLI with no edit and no flag.

The cookbook is pip-installed (editable) into the test venv for this module only and
uninstalled afterwards (unless it was installed before), so no other test module sees it. The broken-plugin and
duplicate-name tests fake further installed packages with a bare ``*.dist-info`` folder
on PYTHONPATH, which is all ``importlib.metadata`` needs to find entry points.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, assert_completed, evals_of, read_jsonl, run_kitchen, steps_of

COOKBOOK = REPO / "examples" / "cookbook"
DIST = "kitchen-cookbook-rsft"
FAST = ("eval_max_examples=4", "num_preview_samples=1", "telemetry.sinks=[jsonl,kept_csv]")


def _installed(dist: str) -> bool:
    # a fresh interpreter: this process's importlib.metadata caches what it has seen
    code = f"import importlib.metadata as m\ntry:\n    m.distribution({dist!r})\nexcept m.PackageNotFoundError:\n    raise SystemExit(1)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.fixture(scope="module", autouse=True)
def cookbook():
    """Install the cookbook for this module; uninstall it after only if this fixture installed it,
    so a user who had it installed keeps it."""
    if _installed(DIST):
        yield
        return
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-q", "-e", str(COOKBOOK)],
                   check=True, capture_output=True, text=True, cwd=REPO)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", DIST], capture_output=True, text=True, cwd=REPO)


def kept_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "kept.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_rsft(run_dir: Path, *overrides: str, timeout: float = 300):
    return run_kitchen("run", "recipe=rsft_basic", f"run_dir={run_dir}", *FAST, *overrides, timeout=timeout)


# ------------------------------------------------------------------ discovery


def test_recipes_lists_the_cookbook_recipe_with_its_package() -> None:
    r = run_kitchen("recipes")
    assert r.code == 0, r
    line = next(line for line in r.out.splitlines() if "rsft_basic" in line)
    assert "rsft" in line and DIST in line and "noop" in line
    assert "warning" not in r.err.lower(), r


def test_plugins_lists_every_part_the_cookbook_registers() -> None:
    r = run_kitchen("plugins")
    assert r.code == 0, r
    rows = {tuple(cell.strip() for cell in line.split("│")[1:4]) for line in r.out.splitlines() if "│" in line}
    for kind, name in (("workflow", "rsft"), ("env", "letters"), ("sink", "kept_csv"), ("stage", "keep_best")):
        assert (kind, name, DIST) in rows, (kind, name, r.out)


def test_describe_shows_the_workflow_keys_and_stage_tree() -> None:
    r = run_kitchen("describe", "rsft_basic")
    assert r.code == 0, r
    assert f"from {DIST}" in r.out  # recipe and workflow both say where they came from
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
            for line in r.out.splitlines() if line.count("│") >= 5 and line.split("│")[1].strip()}
    assert rows["keep_threshold"] == ["float", "0.5", "0.5"]
    assert rows["keep_top"] == ["int", "1", "1"]
    assert rows["samples_per_prompt"] == ["int", "4", "4"]
    assert rows["env"][0] == "str | dict" and rows["env"][1:] == ["letters", "letters"]
    assert rows["max_tokens"] == ["int", "16", "12"]
    for text in ("loop step", "sample_k", "keep_best Keep each prompt's best keep_top", "sft_on_kept",
                 "open_session", "rsft_setup", "evaluate", "checkpoint (final)", "save_weights"):
        assert text in r.out, text


def test_a_cookbook_key_on_another_workflow_names_the_cookbook_workflow(tmp_path: Path) -> None:
    r = run_kitchen("run", "recipe=sl_basic", "adapters=noop", "keep_threshold=0.9", f"run_dir={tmp_path / 'x'}")
    assert r.code == 2, r
    assert "'rsft'" in r.err and DIST in r.err and "rsft_basic" in r.err, r
    assert not (tmp_path / "x").exists()
    r = run_kitchen("validate", "recipe=rsft_basic", "env=letterz")
    assert r.code == 2, r
    assert "Did you mean 'letters'" in r.err, r


# ------------------------------------------------------------------ runs


def test_noop_run_trains_on_kept_samples_and_the_sink_writes_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "rsft"
    r = run_rsft(run_dir, "max_steps=3")
    assert r.code == 0, r
    info = assert_completed(run_dir, 3)
    assert info["workflow"] == "rsft"
    steps = steps_of(run_dir)
    assert sorted(steps) == [1, 2, 3]
    for row in steps.values():
        for key in ("loss", "reward_mean", "reward_max", "accuracy", "kept"):
            assert isinstance(row.get(key), (int, float)), (key, row)
        assert 0 <= row["kept"] <= 4  # keep_top=1 of 4 prompts
    kept = kept_rows(run_dir)
    assert sum(row["kept"] for row in steps.values()) == len(kept) > 0
    assert all(float(k["reward"]) >= 0.5 and k["prompt"].startswith("Name ") for k in kept)
    by_step = {s: sum(1 for k in kept if int(k["step"]) == s) for s in steps}
    assert by_step == {s: row["kept"] for s, row in steps.items()}
    events = read_jsonl(run_dir / "events.jsonl")
    assert sum(1 for e in events if e["event"] == "rsft.kept") == len(kept)
    assert [e["step"] for e in evals_of(run_dir)] == [0, 3]  # the env-accuracy evaluator, before and after
    assert all("eval_accuracy" in e and "eval_reward" in e for e in evals_of(run_dir))


def _shown_in(line: str, output: list[str]) -> bool:
    """Whether some output line holds ``line``'s pieces (split at the README's "...") in order."""
    pieces = [p.strip() for p in line.split("...") if p.strip()]
    for out in output:
        at = 0
        for piece in pieces:
            at = out.find(piece, at)
            if at < 0:
                break
            at += len(piece)
        else:
            return True
    return False


def test_the_readme_noop_transcript_is_what_the_command_prints(tmp_path: Path) -> None:
    """The cookbook README shows a noop run and its kept.csv; both stay what kitchen really prints."""
    text = (COOKBOOK / "README.md").read_text()
    block = text[text.index("$ kitchen run recipe=rsft_basic max_steps=3 run_dir=/tmp/rs1"):]
    block = block[:block.index("\n\n")].splitlines()
    split = block.index("$ cat /tmp/rs1/kept.csv")
    shown, csv_shown = block[1:split], block[split + 1:]
    run_dir = tmp_path / "rs1"
    r = run_kitchen("run", "recipe=rsft_basic", "max_steps=3", f"run_dir={run_dir}")
    assert r.code == 0, r
    output = (r.out + r.err).splitlines()
    missing = [line for line in shown if not _shown_in(line, output)]
    assert not missing, (missing, output)
    assert (run_dir / "kept.csv").read_text().splitlines() == csv_shown


def test_keep_threshold_and_keep_top_change_what_is_kept(tmp_path: Path) -> None:
    loose, none = tmp_path / "loose", tmp_path / "none"
    r = run_rsft(loose, "max_steps=2", "keep_threshold=0", "keep_top=2")
    assert r.code == 0, r
    assert [row["kept"] for row in steps_of(loose).values()] == [8, 8]  # 2 best of each of 4 prompts
    assert len(kept_rows(loose)) == 16

    r = run_rsft(none, "max_steps=2", "keep_threshold=1.5")  # the reward is at most 1: nothing is ever kept
    assert r.code == 0, r
    assert_completed(none, 2)
    assert [row["kept"] for row in steps_of(none).values()] == [0, 0]
    assert [row["loss"] for row in steps_of(none).values()] == [0.0, 0.0]
    assert kept_rows(none) == []  # the header only
    warnings = [e["message"] for e in read_jsonl(none / "events.jsonl") if e["event"] == "run.warning"]
    assert len(warnings) == 2 and all("keep_threshold=1.5" in w for w in warnings), warnings


def test_noop_resume_is_exact(tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_rsft(full, "max_steps=4").code == 0
    assert run_rsft(split, "max_steps=2").code == 0
    r = run_rsft(split, "max_steps=4", "resume=true")
    assert r.code == 0, r
    assert_completed(split, 4)
    a, b = steps_of(full), steps_of(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("reward_mean", "kept", "loss"):
            assert a[step][key] == pytest.approx(b[step][key]), (step, key)
    assert kept_rows(full) == kept_rows(split)


def test_local_backend_tiny_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "local"
    # The tiny random model rarely hits the letter, so keep_threshold=0 makes sure it trains on something.
    r = run_rsft(run_dir, "adapters=local", "model=tiny-llama", "max_steps=2", "max_tokens=6",
                 "prompts_per_step=2", "samples_per_prompt=2", "keep_threshold=0", timeout=600)
    assert r.code == 0, r
    info = assert_completed(run_dir, 2)
    assert info["workflow"] == "rsft"
    steps = steps_of(run_dir)
    assert sorted(steps) == [1, 2]
    assert all(row["kept"] >= 1 and row["loss"] > 0 and row["tokens"] > 0 for row in steps.values()), steps
    assert len(kept_rows(run_dir)) == sum(row["kept"] for row in steps.values())
    assert (run_dir / "final").is_dir() and json.loads((run_dir / "run.json").read_text())["step"] == 2


# ------------------------------------------------------------------ bad plugins


def fake_dist(site: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution: METADATA + entry_points.txt in a dist-info folder."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def naming(text: str, what: str) -> list[str]:
    return [line for line in text.splitlines() if what in line]


def test_two_plugins_registering_one_workflow_name_is_an_error_naming_both(tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_dist(site, "otherplug", "[crucible_kitchen.workflows]\nrsft = rsft_cookbook.workflow:RSFT\n")
    r = run_kitchen("run", "recipe=rsft_basic", f"run_dir={tmp_path / 'run'}", env={"PYTHONPATH": str(site)})
    assert r.code == 2, r
    error = r.err.split("error:", 1)[1]
    assert "'rsft'" in error and "otherplug" in error and DIST in error, r
    assert not (tmp_path / "run").exists()


def test_a_broken_plugin_is_one_warning_and_a_run_that_needs_it_is_exit_2(tmp_path: Path) -> None:
    site, recipes = tmp_path / "site", tmp_path / "recipes"
    recipes.mkdir()
    fake_dist(site, "brokenplug", "[crucible_kitchen.workflows]\nbroken = broken_plugin_mod:WORKFLOW\n"
                                  "[crucible_kitchen.recipes]\nbrokenplug = broken_plugin_mod:RECIPES_DIR\n")
    (site / "broken_plugin_mod.py").write_text('raise RuntimeError("boom: this plugin cannot be imported")\n')
    (recipes / "needs_broken.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /workflow: broken\n  - override /adapters: noop\nmax_steps: 2\n")
    env = {"PYTHONPATH": str(site)}

    r = run_kitchen("--help", env=env)
    assert r.code == 0, r
    assert len(naming(r.err, "brokenplug")) <= 1, r  # --help loads no plugin at all

    r = run_kitchen("recipes", env=env)
    assert r.code == 0, r
    assert "rsft_basic" in r.out  # the good plugin still works
    assert len(naming(r.err, "brokenplug")) == 1, r  # one warning naming the package

    run_dir = tmp_path / "run"
    r = run_kitchen("run", "recipe=needs_broken", f"run_dir={run_dir}", "--recipes-dir", str(recipes), env=env)
    assert r.code == 2, r
    assert "error:" in r.err and "brokenplug" in r.err.split("error:", 1)[1] and "boom" in r.err, r
    assert not run_dir.exists()
