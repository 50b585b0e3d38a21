"""Whether the Tinker SDK will find a credential, decided the way the SDK decides it.

Kept apart from the adapter so that ``kitchen validate`` can check credentials without
importing the SDK (which imports torch): the SDK accepts ``TINKER_API_KEY`` (``tml-``
keys or JWTs), then ``TINKER_CREDENTIAL_CMD``, then the default key stored by ``tinker
auth login`` in ``~/.tinker/credentials.json``; only that last case imports the SDK, to
read its own store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kitchen.errors import BackendError

KEY_ENV = "TINKER_API_KEY"
STORE = Path("~/.tinker/credentials.json")


def _stored_default_key() -> bool:
    if not STORE.expanduser().is_file():
        return False
    try:
        from tinker.lib.credentials import JsonCredentialStore, default_credentials_path

        return JsonCredentialStore(default_credentials_path()).get_default_key() is not None
    except Exception:  # noqa: BLE001 - an unreadable store is no credential
        return False


def require_api_key() -> None:
    """Raise a BackendError naming TINKER_API_KEY unless the SDK will find a credential."""
    key = os.environ.get(KEY_ENV)
    if key:
        if not key.startswith(("tml-", "eyJ")):
            raise BackendError(f"{KEY_ENV} is set but is not a Tinker API key (Tinker keys start with 'tml-').",
                               hint=f"Set it with `export {KEY_ENV}=tml-...`.")
        return
    if os.environ.get("TINKER_CREDENTIAL_CMD") or _stored_default_key():
        return
    raise BackendError(
        f"The tinker backend needs an API key and none is set: it reads {KEY_ENV} from the environment.",
        hint=f"Set it with `export {KEY_ENV}=tml-...` (or store one with `tinker auth login`); for a local "
        "`kitchen serve`, use the key the server was started with or printed at startup.",
    )


def preflight(session: Any, options: Any = None) -> None:
    """What the tinker adapter refuses in ``start_session``, checked before anything is written."""
    require_api_key()
    lora = session.lora
    if lora.rank <= 0:
        raise BackendError("The tinker backend trains LoRA adapters only; lora rank 0 (full fine-tuning) is not available.",
                           hint="Set a LoRA rank > 0, or use the local backend for full fine-tuning.")
    if not (lora.train_mlp or lora.train_attn or lora.train_unembed):
        raise BackendError("At least one of lora train_mlp, train_attn, train_unembed must be true for the tinker backend.")
    # An unreachable server (default URL without a network, DNS failure, closed port) is
    # exit 2 here, in validate as in run, not a silent 20-minute SDK retry loop.
    from kitchen.adapters.tinker.probe import check_reachable

    opts = options if isinstance(options, dict) else {}
    check_reachable(opts.get("base_url"), deadline_s=opts.get("connect_deadline_s"))
