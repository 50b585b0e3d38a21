"""`kitchen run adapters=modal` through the real `modal` client against a loopback Modal control plane.

tests/support/modal_fake.py implements the RPCs the launch path makes (any other is
UNIMPLEMENTED and fails the test); its SandboxCreate starts a real `kitchen serve`, and
the Tinker SDK trains through the HTTPS tunnel it returns. So the run trains for real on
tiny-llama, and the test checks what Modal would have been asked for.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

pytest.importorskip("modal")
pytest.importorskip("cryptography")

from conftest import REPO, step_losses
from modal_fake import fake_modal

TINY = ("recipe=sl_basic", "model=tiny-llama", "max_steps=3", "batch_size=4", "eval_every=0", "save_every=3",
        "num_preview_samples=0", "telemetry=jsonl", "lr_schedule=constant")
MODAL = ("adapters=modal", "adapters.training.gpu=A100-80GB:2", "adapters.training.timeout_s=1800",
         "adapters.training.idle_timeout_s=300", "adapters.training.volume=kitchen-test-vol")


def _secret_values(fake) -> list[str]:
    return [v for env in fake.secrets.values() for v in env.values()]


def test_sl_basic_on_modal_trains_for_real_and_matches_local(kitchen, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "modal"
    r = kitchen("run", *TINY, "adapters=local", f"run_dir={local}")
    assert r.code == 0, r
    with fake_modal() as (fake, env):
        r = kitchen("run", *TINY, *MODAL, f"run_dir={remote}", env=env, timeout=600)
        assert r.code == 0, r
        assert fake.unimplemented == []
        (create,) = fake.requests("SandboxCreate")
        d = create.definition
        assert (d.resources.gpu_config.gpu_type, d.resources.gpu_config.count) == ("A100-80GB", 2)
        assert d.timeout_secs == 1800 and d.idle_timeout_secs == 300
        assert [p.port for p in d.open_ports.ports] == [8000] and not d.open_ports.ports[0].unencrypted
        assert [m.mount_path for m in d.volume_mounts] == ["/state"]
        assert [v.deployment_name for v in fake.requests("VolumeGetOrCreate")] == ["kitchen-test-vol"]
        args = list(d.entrypoint_args)
        assert args[:2] == ["kitchen", "serve"] and args[args.index("--state-dir") + 1] == "/state/modal"
        # the key: generated per run, only in a Modal secret
        (key,) = _secret_values(fake)
        assert len(key) >= 32 and list(d.secret_ids) == list(fake.secrets)
        layers = "\n".join(c for req in fake.requests("ImageGetOrCreate") for c in req.image.dockerfile_commands)
        assert "torch==" in layers and "pip install /opt/kitchen/crucible_kitchen-0.1.0-py3-none-any.whl" in layers
        assert key not in layers and key not in " ".join(args)
        wheels = [zipfile.ZipFile(io.BytesIO(b)) for b in fake.mount_files.values() if b[:2] == b"PK"]
        assert any("kitchen/adapters/modal/launch.py" in w.namelist() for w in wheels)
        assert fake.terminated == [create_id(fake)]
        # checkpoints on the volume (a local folder here), outliving the container
        assert any((fake.state_root / "modal").rglob("*"))
    assert key not in r.text
    for path in remote.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    a, b = step_losses(local), step_losses(remote)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-4), step
    print("modal vs local per-step loss:", {s: (a[s], b[s], abs(a[s] - b[s])) for s in a})
    info = json.loads((remote / "run.json").read_text())
    assert info["status"] == "completed" and info["adapters"] == "modal", info


def create_id(fake) -> str:
    return next(iter(fake.sandboxes))


def test_a_failed_launch_terminates_the_sandbox_and_exits_2(kitchen, tmp_path):
    with fake_modal(fail_tunnels=True) as (fake, env):
        r = kitchen("run", *TINY, *MODAL, f"run_dir={tmp_path / 'x'}", env=env, timeout=300)
        assert r.code == 2, r
        assert "Traceback" not in r.text and "Could not start kitchen serve on Modal" in r.text
        assert fake.terminated == [create_id(fake)]
        assert fake.unimplemented == []


def test_an_error_after_the_launch_terminates_the_sandbox(kitchen, tmp_path):
    """The server has tiny-llama only; the session asks for another model: a 4xx, exit 2, container stopped."""
    with fake_modal() as (fake, env):
        r = kitchen("run", *TINY, *MODAL, "model=no-such-org/no-such-model", "adapters.training.models=[tiny-llama]",
                    f"run_dir={tmp_path / 'x'}", env=env, timeout=300)
        assert r.code != 0, r
        assert "Traceback" not in r.text
        assert fake.terminated == [create_id(fake)]


def test_ctrl_c_terminates_the_sandbox(tmp_path):
    with fake_modal() as (fake, env):
        proc = subprocess.Popen([sys.executable, "-m", "kitchen.cli", "run", *TINY, *MODAL, "max_steps=2000",
                                 "save_every=0", f"run_dir={tmp_path / 'x'}"], cwd=REPO, env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 240
        while not fake.requests("SandboxGetTunnels") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(8)  # training under way
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0, out
        assert fake.terminated == [create_id(fake)], out


def test_missing_token_is_exit_2_before_anything_is_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["HOME"] = str(tmp_path)  # no ~/.modal.toml either
    for command in ("validate", "run"):
        proc = subprocess.run([sys.executable, "-m", "kitchen.cli", command, *TINY, "adapters=modal",
                               f"run_dir={tmp_path / 'x'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert "MODAL_TOKEN_ID" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "x").exists()


def test_unknown_gpu_is_exit_2_naming_it(tmp_path):
    env = {**os.environ, "MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-y"}
    proc = subprocess.run([sys.executable, "-m", "kitchen.cli", "validate", *TINY, "adapters=modal",
                           "adapters.training.gpu=H1000"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "H1000" in proc.stderr and "A100-80GB:2" in proc.stderr, proc.stderr


def test_resume_after_the_container_is_gone_continues_from_the_volume(kitchen, tmp_path):
    """The first container is terminated; a resume starts a new one on the same volume folder and goes on exactly."""
    run_dir, ref = tmp_path / "r", tmp_path / "ref"
    base = (*TINY[:4], "eval_every=0", "save_every=2", "num_preview_samples=0", "telemetry=jsonl", "lr_schedule=constant")
    with fake_modal() as (fake, env):
        assert kitchen("run", *base, *MODAL, "max_steps=2", f"run_dir={run_dir}", env=env, timeout=600).code == 0
        r = kitchen("run", *base, *MODAL, "max_steps=4", f"run_dir={run_dir}", "resume=true", env=env, timeout=600)
        assert r.code == 0, r
        assert len(fake.terminated) == 2 and len(set(fake.terminated)) == 2  # two containers, both stopped
        dirs = [list(req.definition.entrypoint_args) for req in fake.requests("SandboxCreate")]
        assert {a[a.index("--state-dir") + 1] for a in dirs} == {"/state/r"}
    assert kitchen("run", *base, "adapters=local", "max_steps=4", f"run_dir={ref}").code == 0
    a, b = step_losses(run_dir), step_losses(ref)
    for step in range(1, 5):
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-4), step
