"""kitchen's private extensions to the Tinker wire protocol, in one place.

``kitchen serve`` and the kitchen Tinker adapter (``kitchen/adapters/tinker``) agree on a
few things the official API does not carry: the port's per-token loss exactly as the
backend optimised it, the optimizer step counter, session settings passed through
``user_metadata``, a tokenizer id for the noop backend, and the normaliser between
Tinker's ``loss:sum`` and the port's mean loss. Both sides import them from here, so
the two ends cannot drift apart. Real Tinker ignores all of them; a plain SDK client
never needs them. No SDK import: this is a contract, not an adapter.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from kitchen.ports.types import Datum

# ForwardBackwardOutput.metrics key: the port's loss (weighted token mean) as optimised.
LOSS_METRIC = "kitchen_loss:mean"
# optim_step metrics key: the server-side optimizer step after this update.
STEP_METRIC = "kitchen_step"
# create_model user_metadata keys are prefixed with this; the rest is the setting name.
METADATA_PREFIX = "kitchen_"
# Settings the adapter forwards in user_metadata (each as "kitchen_<name>").
SESSION_SETTINGS = ("max_length", "dtype", "device", "lora_alpha", "lora_dropout")
# get_info tokenizer_id of the noop backend's byte tokenizer (no ':': the SDK cuts ids there).
NOOP_TOKENIZER_ID = "kitchen-noop-bytes"


def total_weight(data: Iterable[Datum]) -> float:
    """The normaliser between Tinker's ``loss:sum`` and the port's per-token loss.

    The sum of ``weights`` when present, else the token count; never 0. Shared by the
    server (which reports ``loss:sum``) and the adapter (which divides it back).
    """
    total = 0.0
    for d in data:
        w = d.loss_fn_inputs.get("weights")
        total += float(sum(w)) if w is not None else float(len(d.model_input))
    return total if total > 0 else 1.0


def session_metadata(settings: Mapping[str, Any]) -> dict[str, str]:
    """``user_metadata`` entries for the adapter's session settings (None -> "")."""
    return {f"{METADATA_PREFIX}{k}": "" if v is None else str(v) for k, v in settings.items()}


def session_settings(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The server's view: the ``kitchen_*`` entries of ``user_metadata``, prefix removed."""
    md = metadata or {}
    return {k[len(METADATA_PREFIX):]: v for k, v in md.items() if isinstance(k, str) and k.startswith(METADATA_PREFIX)}
