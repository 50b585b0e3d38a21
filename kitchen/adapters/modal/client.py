"""``adapters=modal``: the Tinker adapter against ``kitchen serve`` in a Modal GPU sandbox.

Everything the Tinker adapter does (futures, retries, fail-fast, checkpoints as
``tinker://`` pointers) is reused unchanged; this class adds the sandbox's lifetime. The
API key is generated per run with ``secrets.token_urlsafe``, sent to Modal as a Secret,
and held in memory only: the Tinker SDK's ServiceClient reads it from ``TINKER_API_KEY``
in this process while the session opens, and the variable is put back right after.
The sandbox is terminated in ``close()`` (end of run, error, Ctrl-C) and at interpreter
exit; its ``timeout_s`` bounds the cost if this process is killed outright.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
from typing import Any

from kitchen.adapters.modal.launch import ModalServer, launch
from kitchen.adapters.modal.options import check_options, require_credentials
from kitchen.adapters.tinker.client import TinkerTrainingClient
from kitchen.adapters.tinker.credentials import KEY_ENV
from kitchen.errors import BackendError, KitchenError
from kitchen.io.secrets import redact_text
from kitchen.ports.types import SessionConfig

log = logging.getLogger("kitchen.modal")
_ENV_LOCK = threading.Lock()


class ModalTrainingClient(TinkerTrainingClient):
    def __init__(self, gpu: str = "H100", timeout_s: int = 3600, idle_timeout_s: int | None = 600,
                 volume: str = "kitchen-state", app_name: str = "crucible-kitchen", startup_timeout_s: int = 900,
                 models: list[str] | None = None, max_retries: int = 3, retry_backoff_s: float = 0.5,
                 request_timeout_s: float | None = None) -> None:
        super().__init__(base_url=None, max_retries=max_retries, retry_backoff_s=retry_backoff_s,
                         timeout_s=request_timeout_s, connect_deadline_s=startup_timeout_s)
        self.gpu, self.timeout_s_modal, self.idle_timeout_s = gpu, int(timeout_s), idle_timeout_s
        self.volume, self.app_name, self.startup_timeout_s = volume, app_name, int(startup_timeout_s)
        self.models = list(models or [])
        check_options({"gpu": gpu, "timeout_s": timeout_s, "idle_timeout_s": idle_timeout_s, "volume": volume,
                       "startup_timeout_s": startup_timeout_s})
        self.server: ModalServer | None = None
        self._key: str | None = None

    def __repr__(self) -> str:
        return f"ModalTrainingClient(gpu={self.gpu!r}, volume={self.volume!r}, timeout_s={self.timeout_s_modal})"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_key", None)
        state["server"] = None
        return state

    def _state_subdir(self) -> str:
        # the run dir's name keys the state folder on the volume, so a resume finds its checkpoints
        d = self.checkpoint_dir
        return (d.parent.name if d is not None else "run") or "run"

    def start_session(self, config: SessionConfig) -> dict[str, Any]:
        require_credentials()
        self._key = self._key or "tml-" + secrets.token_urlsafe(32)  # the SDK accepts tml- keys
        models = self.models or [config.base_model]
        if self.server is None:
            try:
                self.server = launch(api_key=self._key, gpu=self.gpu, timeout_s=self.timeout_s_modal,
                                     idle_timeout_s=self.idle_timeout_s, volume=self.volume, app_name=self.app_name,
                                     state_subdir=self._state_subdir(), models=models,
                                     tunnel_timeout_s=self.startup_timeout_s)
            except KitchenError:
                raise
            except Exception as exc:  # noqa: BLE001 - every Modal failure is one paragraph
                raise BackendError(f"Could not start kitchen serve on Modal (gpu={self.gpu}): {type(exc).__name__}: "
                                   f"{redact_text(str(exc), known=(self._key,))}",
                                   hint="Check the Modal token, quota and GPU type; nothing keeps running.") from None
            atexit.register(self.close)
        self.base_url = self.server.url
        try:
            with _ENV_LOCK:
                saved = os.environ.get(KEY_ENV)
                os.environ[KEY_ENV] = self._key
                try:
                    facts = super().start_session(config)
                finally:
                    if saved is None:
                        os.environ.pop(KEY_ENV, None)
                    else:
                        os.environ[KEY_ENV] = saved
        except BaseException:
            self.close()
            raise
        facts.update(backend="modal", gpu=self.gpu, volume=self.volume, device=f"modal:{self.gpu}")
        return facts

    def close(self) -> None:
        try:
            super().close()
        finally:
            server, self.server = self.server, None
            if server is not None:
                server.terminate()
