"""The seams a user extends through: per-workflow keys in `describe`, extra evaluators and
renderers by `_target_`, and the BlobStore checkpoint mirror, all through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_completed, read_jsonl

NOOP = ("adapters=noop", "telemetry=jsonl")


def test_describe_shows_the_workflows_own_keys_with_types_and_choices(kitchen):
    r = kitchen("describe", "dpo_basic")
    assert r.code == 0, r
    assert "hyperparameters of workflow preference" in r.out and "dpo_beta" in r.out
    rl = kitchen("describe", "rl_basic")
    assert "importance_sampling | ppo" in rl.out  # a Literal shows its choices
    assert "env" in rl.out and "dpo_beta" not in rl.out and "batch_size" not in rl.out
    full = kitchen("describe", "sl_basic", "--all")
    assert "max_steps" in full.out and "int" in full.out  # Optional[int] shows as int
    assert "supervised_step" in full.out and "forward_backward + optim_step" in full.out  # the stage tree


def test_every_key_of_every_workflow_has_a_description():
    """`kitchen describe --all` is the reference for keys: an empty description there is a key
    nobody can learn about without reading the source."""
    from pydantic import BaseModel

    from kitchen.workflows import get_workflow, workflow_names

    def blank(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                out.append(prefix + name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                out += blank(field.annotation, f"{prefix}{name}.")
        return out

    missing = {name: blank(get_workflow(name).config) for name in workflow_names()}
    assert all(not keys for keys in missing.values()), missing


def test_recipe_lists_extra_evaluators_by_target(kitchen, tmp_path):
    """An evaluator from a `_target_` runs with the workflow's own, and its previews are shown."""
    run_dir = tmp_path / "run"
    extra = "evaluators=[{_target_: kitchen.evaluators.GreedyPreview, prompts: ['How many ml in a cup?']}]"
    r = kitchen("run", *NOOP, "max_steps=2", "num_preview_samples=3", extra, f"run_dir={run_dir}")
    assert r.code == 0, r
    assert_completed(run_dir, 2)
    samples = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "sample.completion"]
    extra_samples = [s for s in samples if s["prompt"] == "How many ml in a cup?"]
    assert [s["tag"] for s in extra_samples] == ["before", "after"]
    info = json.loads((run_dir / "run.json").read_text())
    assert [h["step"] for h in info["eval_history"]] == [0, 2] and "test_nll" in info["eval_history"][0]


def test_renderer_by_target_with_its_runtime_arguments(kitchen, tmp_path):
    run_dir = tmp_path / "run"
    r = kitchen("run", *NOOP, "max_steps=1", "renderer={_target_: kitchen.train.renderers.RoleColonRenderer}",
                f"run_dir={run_dir}")
    assert r.code == 0, r
    assert_completed(run_dir, 1)


@pytest.mark.parametrize("where", ["default relative run_dir", "absolute run_dir"])
def test_checkpoint_mirror_is_a_whole_run_dir(kitchen, tmp_path, where):
    """Checkpoints, their index, config.yaml, run.json and final/ all reach the mirror, with the
    default (relative) run dir as with an absolute one; a mirror trusted as a backup must be whole."""
    mirror = tmp_path / "bucket"
    args = [*NOOP, "max_steps=4", "save_every=2", f"checkpoint_mirror=file://{mirror}"]
    if where == "absolute run_dir":
        args.append(f"run_dir={tmp_path / 'run'}")
    r = kitchen("run", *args, cwd=tmp_path)
    assert r.code == 0, r
    run_dir = tmp_path / "run" if where == "absolute run_dir" else next((tmp_path / "runs").iterdir())
    mirrored = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file())
    local = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "checkpoints").rglob("*") if p.is_file())
    assert local and set(local) <= set(mirrored), (local, mirrored)
    assert {"config.yaml", "run.json"} <= set(mirrored) and any(m.startswith("final/") for m in mirrored), mirrored
    index = mirror / "checkpoints" / "checkpoints.jsonl"
    assert [json.loads(line)["step"] for line in index.read_text().splitlines()] == [2, 4]
    for rel in [*local, "config.yaml", "run.json"]:
        assert (mirror / rel).read_bytes() == (run_dir / rel).read_bytes(), rel
    assert json.loads((mirror / "run.json").read_text())["status"] == "completed"


def test_python_facade_mirrors_to_an_fsspec_url(tmp_path, monkeypatch):
    import fsspec

    import kitchen

    monkeypatch.chdir(tmp_path)
    result = kitchen.run("sl_basic", overrides=[*NOOP, "max_steps=2", "save_every=2", "checkpoint_mirror=memory://kitchen-mirror/r",
                                              f"run_dir={tmp_path / 'r'}"])
    assert result.status == "completed"
    fs = fsspec.filesystem("memory")
    names = [Path(p).name for p in fs.find("/kitchen-mirror/r")]
    assert "checkpoints.jsonl" in names and "config.yaml" in names
