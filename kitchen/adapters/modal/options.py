"""Options and credentials of ``adapters=modal``, checked before anything is written (run and validate).

The GPU string goes through Modal's own parser (``modal._utils.function_utils.parse_gpu_config``,
the one ``Sandbox.create`` uses), which checks the ``TYPE:COUNT`` syntax; the type itself is
checked against the GPU types Modal documents (the parser accepts any word, and only Modal's
server would refuse an unknown one, after a paid round trip).
"""

from __future__ import annotations

import os
from typing import Any

from kitchen.errors import BackendError, ConfigError

# Modal's documented GPU types (modal.com/docs/guide/gpu); "H100!" pins an H100 (no upgrade to H200).
GPU_TYPES = ("T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H100!", "H200", "B200",
             "RTX-PRO-6000")
MAX_GPUS = 8
MAX_TIMEOUT_S = 24 * 3600  # Modal's cap on a sandbox's lifetime


def parse_gpu(value: Any) -> tuple[str, int]:
    """(type, count) for ``adapters.training.gpu``, or a ConfigError naming the value and what is allowed."""
    allowed = f"one of {', '.join(GPU_TYPES)}, optionally with a count 1-{MAX_GPUS} such as 'A100-80GB:2'"
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"adapters.training.gpu={value!r} is not a GPU; use {allowed}.")
    from modal._utils.function_utils import parse_gpu_config
    from modal.exception import InvalidError

    try:
        cfg = parse_gpu_config(value.strip())
    except InvalidError as exc:
        raise ConfigError(f"adapters.training.gpu={value!r}: {exc} Use {allowed}.") from None
    if cfg.gpu_type not in GPU_TYPES:
        raise ConfigError(f"adapters.training.gpu={value!r}: Modal has no GPU type {cfg.gpu_type!r}; use {allowed}.")
    if not 1 <= cfg.count <= MAX_GPUS:
        raise ConfigError(f"adapters.training.gpu={value!r}: {cfg.count} GPUs is not allowed; use {allowed}.")
    return cfg.gpu_type, cfg.count


def check_options(opts: dict[str, Any]) -> None:
    parse_gpu(opts.get("gpu"))
    for key, low, high in (("timeout_s", 60, MAX_TIMEOUT_S), ("idle_timeout_s", 10, MAX_TIMEOUT_S),
                           ("startup_timeout_s", 10, MAX_TIMEOUT_S)):
        value = opts.get(key)
        if value is None and key == "idle_timeout_s":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"adapters.training.{key}={value!r} is not allowed; use a number of seconds from {low} to {high}"
                              + (" (or null for no idle shutdown)." if key == "idle_timeout_s" else "."))
    volume = opts.get("volume")
    from modal._utils.name_utils import is_valid_object_name

    if not isinstance(volume, str) or not is_valid_object_name(volume):
        raise ConfigError(f"adapters.training.volume={volume!r} is not a Modal Volume name; use up to 64 letters, digits, "
                          "'-', '_' and '.' (for example 'kitchen-state').")


def require_credentials() -> None:
    """A BackendError unless Modal's client will find a token (MODAL_TOKEN_ID/SECRET, else ~/.modal.toml)."""
    from modal.config import config, user_config_path

    if config.get("token_id") and config.get("token_secret"):
        return
    raise BackendError(
        "The modal backend needs a Modal token and none was found: Modal reads MODAL_TOKEN_ID and MODAL_TOKEN_SECRET "
        f"from the environment, else the active profile of {user_config_path}; nothing was started or written.",
        hint="Create one with `modal token new` (or set both variables), then run again.",
    )


def preflight(session: Any, options: Any = None) -> None:
    """What ``adapters=modal`` refuses, before any file is written or any container started."""
    opts = dict(options) if hasattr(options, "items") else {}
    check_options(opts)
    require_credentials()
    lora = session.lora
    if lora.rank <= 0:
        raise BackendError("The modal backend trains LoRA adapters through the Tinker API; lora rank 0 (full "
                           "fine-tuning) is not available.", hint="Set a LoRA rank > 0, or use adapters=local.")
    if os.environ.get("MODAL_TOKEN_ID") and not os.environ.get("MODAL_TOKEN_SECRET"):
        raise BackendError("MODAL_TOKEN_ID is set but MODAL_TOKEN_SECRET is not; Modal needs both.")
