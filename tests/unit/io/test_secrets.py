"""Nothing leaked: credentials inside URLs and secret-looking arguments never reach a file."""

from __future__ import annotations

import json

import pytest

from conftest import SERVE_KEY
from kitchen.io.secrets import redact_argv, redact_url

NOOP = ("adapters=noop", "telemetry=jsonl", "num_preview_samples=0")
URL_SECRET, QUERY_SECRET = "pw-8c1e7a1d", "qs-93bd0f2e"


def test_redact_url_hides_userinfo_and_query_tokens_keeps_the_rest():
    assert redact_url(f"http://alice:{URL_SECRET}@10.0.0.1:8000/v1") == "http://alice:***@10.0.0.1:8000/v1"
    assert redact_url(f"https://{URL_SECRET}@host/x") == "https://***@host/x"
    assert redact_url(f"https://h/p?a=1&token={QUERY_SECRET}&api_key=k") == "https://h/p?a=1&token=***&api_key=***"
    assert redact_url(f"see http://u:{URL_SECRET}@h/ and https://h/?sig={QUERY_SECRET} too") == \
        "see http://u:***@h/ and https://h/?sig=*** too"
    assert redact_url("http://127.0.0.1:8000/?max_tokens=32") == "http://127.0.0.1:8000/?max_tokens=32"
    assert redact_url("tinker://run-1/weights/final") == "tinker://run-1/weights/final"


def test_redact_argv_matches_whole_secret_keys_not_substrings():
    argv = ["run", "max_tokens=64", "tokenizer=x", "api_key=K1", "+adapters.training.token=K2", "hf_token=K3",
            "password=K4", "client_secret=K5", "--api-key", "K6", "--token=K7", "monkey=ok",
            f"+adapters.training.base_url=http://u:{URL_SECRET}@h:1/"]
    assert redact_argv(argv) == ["run", "max_tokens=64", "tokenizer=x", "api_key=***", "+adapters.training.token=***",
                                 "hf_token=***", "password=***", "client_secret=***", "--api-key", "***", "--token=***",
                                 "monkey=ok", "+adapters.training.base_url=http://u:***@h:1/"]


def assert_clean(run_dir, *secrets: str) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (path, secret)


def test_urls_in_config_and_argv_are_redacted_harmless_args_kept(kitchen, tmp_path):
    run_dir = tmp_path / "urls"
    note = f"data from https://bob:{URL_SECRET}@data.example/set?token={QUERY_SECRET}&v=2"
    r = kitchen("run", *NOOP, "max_steps=2", "preview_max_tokens=7", f"description='{note}'", f"run_dir={run_dir}")
    assert r.code == 0, r
    assert_clean(run_dir, URL_SECRET, QUERY_SECRET)
    assert "https://bob:***@data.example/set?token=***&v=2" in (run_dir / "config.yaml").read_text()
    argv = json.loads((run_dir / "run.json").read_text())["argv"]
    assert "preview_max_tokens=7" in argv  # not dropped for containing "token"
    assert any("bob:***@data.example" in a for a in argv), argv


@pytest.mark.parametrize("how", ["override", "env"])
def test_tinker_base_url_credentials_never_reach_the_run_dir(kitchen, noop_server, tmp_path, how):
    """The real tinker SDK over HTTP against `kitchen serve`, with credentials in base_url."""
    run_dir = tmp_path / how
    url = noop_server.base_url.replace("http://", f"http://kitchen:{URL_SECRET}@")
    args = ["run", "recipe=sl_basic", "adapters=tinker", "model=tiny-llama", "max_steps=2", "save_every=1",
            "batch_size=2", "num_preview_samples=0", "telemetry=jsonl", f"run_dir={run_dir}"]
    env = {"TINKER_API_KEY": SERVE_KEY}
    if how == "override":
        args.append(f"+adapters.training.base_url={url}")
    else:
        env["TINKER_BASE_URL"] = url
    r = kitchen(*args, env=env)
    assert r.code == 0, r
    assert URL_SECRET not in r.text
    pointers = sorted(run_dir.glob("checkpoints/step_*/tinker_checkpoint.json")) + [run_dir / "final" / "tinker_weights.json"]
    assert len(pointers) == 3
    for pointer in pointers:
        assert json.loads(pointer.read_text())["base_url"] == url.replace(URL_SECRET, "***")
    assert_clean(run_dir, URL_SECRET, SERVE_KEY)
