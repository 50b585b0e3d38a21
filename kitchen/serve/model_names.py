"""Which models a ``kitchen serve`` accepts, and under which names it advertises them."""

from __future__ import annotations

from pathlib import Path

from kitchen.serve.errors import RequestError

# Served by default (``--model`` replaces the list). Advertised by Hugging Face id where
# there is one, so ``AutoTokenizer.from_pretrained(model_name)`` works in clients;
# kitchen's aliases (smollm2-135m-instruct, tiny) are still accepted.
DEFAULT_MODELS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "tiny-llama")
NOOP_MODEL = "noop"


def served_models(backend: str, models: list[str] | None) -> dict[str, str]:
    """canonical name -> advertised name, for the models this server accepts.

    A kitchen alias of a model with a Hugging Face id is advertised by that id; anything
    else (a local directory, a cached hub id, ``tiny-llama``) by the name given.
    """
    from kitchen.adapters.local.models import DEFAULT_MODEL, SMOLLM2_HF_ID, canonical_name

    names = list(models) if models else list(DEFAULT_MODELS)
    if backend == "noop" and not models:
        names = [NOOP_MODEL, *names]
    out: dict[str, str] = {}
    for n in names:
        canon = canonical_name(n)
        out[canon] = SMOLLM2_HF_ID if canon == DEFAULT_MODEL else n
    return out


def served_name(models: dict[str, str], backend: str, requested: str) -> str:
    """The advertised name for a requested model (an alias, hub id or local path), or 404."""
    from kitchen.adapters.local.models import canonical_name

    found = models.get(canonical_name(requested))
    if found is None and backend == "local" and requested and Path(requested).expanduser().exists():
        return requested  # a model directory or run dir on this machine (e.g. a distillation teacher)
    if found is None:
        raise RequestError(404, f"model {requested!r} is not served here; this server serves: {', '.join(models.values())} "
                                "(start it with --model NAME to serve another)")
    return found


def check_models(backend: str, models: list[str]) -> None:
    """Every ``--model`` must be something the local backend can load (no download)."""
    from kitchen.adapters.local.models import resolve_model
    from kitchen.errors import KitchenError
    from kitchen.serve.options import ServeOptionError

    for m in models:
        if backend == "noop":
            continue
        try:
            resolve_model(m)
        except KitchenError as exc:
            raise ServeOptionError(f"--model {m!r}: {exc.render()}") from None
