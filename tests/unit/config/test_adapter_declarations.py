"""Core code asks the adapters group what it declares (local_models, local_checkpoints), never its name."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO
from kitchen.config.recipes import bundled_conf_dir
from kitchen.config.spec import AdaptersSpec
from kitchen.errors import KitchenError
from kitchen.outputs.run_weights import RunWeights, is_local_run, require_local
from kitchen.runs.model_preflight import check_models

KITCHEN = REPO / "kitchen"
LOCAL = "kitchen.adapters.local.LocalTrainingClient"


def group(name: str) -> dict:
    return yaml.safe_load((bundled_conf_dir() / "adapters" / f"{name}.yaml").read_text())


def plugin_adapters(**declared) -> AdaptersSpec:
    return AdaptersSpec(name="mine", training={"_target_": "my_pkg.Client"}, dataset_store={"_target_": "my_pkg.Store"}, **declared)


def run(adapters: dict) -> RunWeights:
    return RunWeights(Path("some-run"), {"adapters": adapters}, {})


def test_the_bundled_groups_declare_what_they_are() -> None:
    for name, local in (("local", True), ("noop", False), ("tinker", False)):
        spec = AdaptersSpec(**group(name))
        assert (spec.local_models, spec.local_checkpoints) == (local, local), name


def test_a_plugin_that_declares_nothing_gets_the_safe_defaults() -> None:
    spec = plugin_adapters()
    assert spec.local_models is False and spec.local_checkpoints is False
    assert not is_local_run(run(spec.model_dump(mode="json")))


def test_model_resolution_follows_local_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an uncached hub id is an error without asking the hub
    common = dict(model="no-such-org/no-such-model", chat_template=None, push_to_hub=None, teacher=None, model_revision=None)
    assert check_models(SimpleNamespace(adapters=plugin_adapters(), **common)) == ""  # passed to the backend as given
    with pytest.raises(KitchenError, match="no-such-org/no-such-model"):
        check_models(SimpleNamespace(adapters=plugin_adapters(local_models=True), **common))


def test_run_weights_follow_local_checkpoints() -> None:
    assert is_local_run(run(plugin_adapters(local_checkpoints=True).model_dump(mode="json")))
    noop = run(AdaptersSpec(**group("noop")).model_dump(mode="json"))
    assert not is_local_run(noop)
    with pytest.raises(KitchenError, match="adapters=noop"):
        require_local(noop)
    swapped = AdaptersSpec(**{**group("local"), "training": {"_target_": "my_pkg.Client"}, "local_checkpoints": False})
    assert not is_local_run(run(swapped.model_dump(mode="json")))


def test_a_run_dir_from_before_the_declaration_uses_its_bundled_group() -> None:
    """config.yaml of an older run records no local_checkpoints: the group it chose answers, for that group's own class."""
    assert is_local_run(run({"name": "local", "training": {"_target_": LOCAL}}))
    assert not is_local_run(run({"name": "local", "training": {"_target_": "my_pkg.Client"}}))
    assert not is_local_run(run({"name": "noop", "training": {"_target_": "kitchen.adapters.noop.NoopTrainingClient"}}))
    assert not is_local_run(run({"name": "../adapters/local", "training": {"_target_": LOCAL}}))
    assert not is_local_run(run({}))


def test_no_core_module_decides_by_an_adapters_name_or_class_path() -> None:
    """Outside kitchen/adapters/ (and kitchen serve's own --backend option), nothing compares
    adapters.name or a _target_ with a built-in backend."""
    pattern = re.compile(
        r"""adapters\.name\s*(==|!=|in\b)|startswith\(\s*["']kitchen\.adapters|["'](local|noop|tinker)["']\s*(==|!=)\s*\S*adapters"""
    )
    found = []
    for path in KITCHEN.rglob("*.py"):
        rel = path.relative_to(KITCHEN).as_posix()
        if rel.startswith(("adapters/", "serve/")):
            continue
        found += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
