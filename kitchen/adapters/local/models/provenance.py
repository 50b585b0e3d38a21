"""Provenance: where a model's base weights truly came from, as recorded in adapter
configs, model cards and run.json, and the dtype its final weights are saved in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kitchen.adapters.local.models.resolve import SMOLLM2_HF_ID, SMOLLM2_PACKAGE, ResolvedModel


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

def config_dtype(path: str) -> str | None:
    """The float dtype a model directory's config.json says its weights were published in."""
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dt = cfg.get("torch_dtype") or cfg.get("dtype")
    return dt if dt in ("float32", "bfloat16", "float16") else None
