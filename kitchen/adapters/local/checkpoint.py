"""Exact-resume training checkpoints for the local backend.

A state checkpoint is a directory ``<checkpoint_root>/<name>/``::

    weights.safetensors     trainable parameters (LoRA adapters, or all weights for full FT)
    optimizer.safetensors   AdamW state tensors, keyed ``state.<param index>.<key>``
    optimizer.json          param_groups (hyperparameters), parameter names, non-tensor state
    rng.safetensors         torch CPU / CUDA generator states, numpy MT19937 key, python MT key
    rng.json                the scalar parts of the python and numpy RNG states
    state.json              step, model name, LoRA settings
    manifest.json           format, step and the sha256 + size of every file above

The whole directory is written into a temporary sibling, fsynced and renamed into place,
so a crash never leaves a half-written checkpoint under the final name. Loading verifies
every sha256 first; a mismatch is a :class:`KitchenError` naming the file.

The last section moves a :class:`~kitchen.adapters.local.session.TrainSession`'s
trainable tensors and optimizer state to and from these files (FSDP2 shards gathered on
save, re-laid out on load).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kitchen.errors import KitchenError

if TYPE_CHECKING:
    from kitchen.adapters.local.session import TrainSession

FORMAT = "kitchen-local-state/1"
MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def _save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(clean, str(path), metadata=metadata)


def _load_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------- RNG (de)serialisation
def rng_to_files(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    if "python" in state:
        version, key, gauss = state["python"]
        tensors["python.key"] = torch.tensor(list(key), dtype=torch.int64)
        scalars["python"] = {"version": version, "gauss": gauss}
    if "numpy" in state:
        kind, key, pos, has_gauss, cached = state["numpy"]
        tensors["numpy.key"] = torch.from_numpy(np.asarray(key, dtype=np.int64))
        scalars["numpy"] = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    if "torch" in state:
        tensors["torch.cpu"] = state["torch"]
    for i, s in enumerate(state.get("cuda") or []):
        tensors[f"torch.cuda.{i}"] = s
    scalars["num_cuda"] = len(state.get("cuda") or [])
    return tensors, scalars


def rng_from_files(tensors: dict[str, Any], scalars: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    state: dict[str, Any] = {}
    if "python.key" in tensors:
        py = scalars["python"]
        state["python"] = (py["version"], tuple(int(x) for x in tensors["python.key"].tolist()), py["gauss"])
    if "numpy.key" in tensors:
        n = scalars["numpy"]
        state["numpy"] = (
            n["kind"],
            tensors["numpy.key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    if "torch.cpu" in tensors:
        state["torch"] = tensors["torch.cpu"]
    ncuda = int(scalars.get("num_cuda", 0))
    if ncuda:
        state["cuda"] = [tensors[f"torch.cuda.{i}"] for i in range(ncuda)]
    return state


# ---------------------------------------------------------------- optimizer (de)serialisation
def optimizer_to_files(opt_state: dict[str, Any], param_names: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    tensors: dict[str, Any] = {}
    other: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v
            else:
                other.setdefault(str(idx), {})[k] = v
    groups = []
    for g in opt_state["param_groups"]:
        g2 = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        groups.append(g2)
    meta = {"param_groups": groups, "param_names": list(param_names), "non_tensor_state": other}
    return tensors, meta


def optimizer_from_files(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for idx, st in meta.get("non_tensor_state", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g2 = dict(g)
        if "betas" in g2:
            g2["betas"] = tuple(g2["betas"])
        groups.append(g2)
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------- write / read
def write_state(
    final_dir: str | os.PathLike,
    *,
    step: int,
    weights: dict[str, Any],
    optimizer: tuple[dict[str, Any], dict[str, Any]] | None,
    rng: dict[str, Any],
    info: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically; returns the final directory."""
    from kitchen.io.atomic import atomic_publish_dir

    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    # refuse up front when the checkpoint cannot fit, naming the bytes it needs
    from kitchen.runs.diskfull import ensure_space

    tensors = [*weights.values(), *(optimizer[0].values() if optimizer is not None else ())]
    needed = sum(int(t.numel()) * int(t.element_size()) for t in tensors if hasattr(t, "numel")) + 64 * 1024
    ensure_space(final.parent, needed, f"checkpoint {final.name}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _save_tensors(tmp / "weights.safetensors", weights)
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer
            _save_tensors(tmp / "optimizer.safetensors", opt_tensors)
            _write_json(tmp / "optimizer.json", opt_meta)
        rng_tensors, rng_scalars = rng_to_files(rng)
        _save_tensors(tmp / "rng.safetensors", rng_tensors)
        _write_json(tmp / "rng.json", rng_scalars)
        _write_json(tmp / "state.json", {"step": int(step), **info})
        files = {}
        for p in sorted(tmp.iterdir()):
            files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        _write_json(tmp / MANIFEST, {"format": FORMAT, "step": int(step), "files": files})
        atomic_publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    mf = p / MANIFEST
    if not mf.is_file():
        raise KitchenError(f"'{p}' is not a local-backend checkpoint: {MANIFEST} is missing.")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise KitchenError(f"Checkpoint manifest {mf} is corrupt ({e}).") from None
    if manifest.get("format") != FORMAT:
        raise KitchenError(f"Checkpoint {p} has format {manifest.get('format')!r}; this kitchen reads {FORMAT!r}.")
    return manifest


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check every file against the manifest's sha256; returns the manifest."""
    p = Path(path)
    manifest = read_manifest(p)
    for name, meta in manifest["files"].items():
        f = p / name
        if not f.is_file():
            raise KitchenError(f"Checkpoint {p} is incomplete: {name} is missing.")
        digest = sha256_file(f)
        if digest != meta["sha256"]:
            raise KitchenError(
                f"Checkpoint file {f} is corrupt: its sha256 {digest[:12]}... does not match the "
                f"manifest ({meta['sha256'][:12]}...).",
                hint="Resume from an earlier checkpoint or start the run again.",
            )
    return manifest


def read_state(path: str | os.PathLike, *, with_optimizer: bool = True) -> dict[str, Any]:
    """Verify, then load: ``{"step", "info", "weights", "optimizer", "rng"}``."""
    p = Path(path)
    manifest = verify(p)
    files = manifest["files"]
    out: dict[str, Any] = {"step": int(manifest["step"])}
    out["info"] = json.loads((p / "state.json").read_text())
    out["weights"] = _load_tensors(p / "weights.safetensors")
    out["optimizer"] = None
    if with_optimizer and "optimizer.safetensors" in files:
        meta = json.loads((p / "optimizer.json").read_text())
        out["optimizer"] = (optimizer_from_files(_load_tensors(p / "optimizer.safetensors"), meta), meta)
    out["rng"] = rng_from_files(_load_tensors(p / "rng.safetensors"), json.loads((p / "rng.json").read_text()))
    return out


# ---------------------------------------------------------------- a session's tensors <-> a checkpoint
def trainable_tensors(session: TrainSession, optimizer: Any) -> tuple[dict[str, Any], tuple[dict[str, Any], dict[str, Any]] | None]:
    """The trainable weights and (when there is one) the optimizer state, as files hold them.

    Under FSDP2 both are gathered from the shards: a collective every rank must call.
    """
    from kitchen.adapters.local.scale import full_optimizer_state, full_tensor

    names = [n for n, _ in session.params]
    weights = {n: full_tensor(p.detach()) for n, p in session.params}
    if optimizer is None:
        return weights, None
    opt_sd = full_optimizer_state(optimizer) if session.parallel.fsdp else optimizer.state_dict()
    return weights, optimizer_to_files(opt_sd, names)


def restore_weights(session: TrainSession, weights: dict[str, Any], path: str) -> None:
    """Copy a checkpoint's trainable weights into ``session``'s parameters (shards re-laid out)."""
    import torch

    from kitchen.adapters.local.scale import like

    mine = dict(session.params)
    if set(weights) != set(mine):
        missing = sorted(set(mine) - set(weights))[:3]
        extra = sorted(set(weights) - set(mine))[:3]
        raise KitchenError(
            f"Checkpoint {path} does not match this session's trainable parameters "
            f"(missing: {missing or 'none'}, unexpected: {extra or 'none'}). Was it saved with a "
            "different model or LoRA setting?"
        )
    with torch.no_grad():
        for n, p in session.params:
            t = weights[n]
            if t.shape != p.shape:
                raise KitchenError(f"Checkpoint {path}: parameter {n} has shape {tuple(t.shape)}, expected {tuple(p.shape)}.")
            if hasattr(p, "device_mesh"):  # FSDP2 shard
                p.copy_(like(p, t))
            else:
                p.copy_(t.to(p.dtype))
    for _, p in session.params:
        p.grad = None


def optimizer_state_for(session: TrainSession, opt_state: dict[str, Any], meta: dict[str, Any], path: str) -> dict[str, Any]:
    """A checkpoint's optimizer state, checked against ``session``'s parameters and re-sharded under FSDP2."""
    from kitchen.adapters.local.scale import local_optimizer_state

    if meta.get("param_names") != [n for n, _ in session.params]:
        raise KitchenError(f"Checkpoint {path}: optimizer state was saved for different parameters.")
    if session.parallel.fsdp:
        return local_optimizer_state(opt_state, [p for _, p in session.params])
    return opt_state
