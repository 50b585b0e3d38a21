"""Sampler weights of ``kitchen serve``: on disk under ``--state-dir``, an LRU in memory.

Every ``save_weights_for_sampler`` writes the session's trainable tensors (LoRA A/B
only, for a LoRA session) to ``runs/<model>/sampler_weights/<name>/`` with a
``meta.json``, so its ``tinker://`` path works after a restart until it is deleted.
Unnamed snapshots (``save_weights_and_get_sampling_client``, which RL loops call every
step) go to ``ephemeral/`` and only the newest ``EPHEMERAL_KEEP`` per model are kept.

In memory there are at most ``max_loaded`` loaded samplers (least recently used
evicted); a LoRA snapshot's sampler is just its adapter tensors over one shared
:class:`~kitchen.adapters.local.snapshots.AdapterHost` per (base model, LoRA shape).
The noop backend stores only its step counter.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from kitchen.io.atomic import atomic_publish_dir, temp_sibling
from kitchen.ports.types import LoraConfig, SessionConfig
from kitchen.serve.backends import START_LOCK
from kitchen.serve.errors import RequestError, safe_name

log = logging.getLogger("kitchen.serve")

EPHEMERAL_KEEP = 16
META = "meta.json"
SAMPLER_PATH = re.compile(r"tinker://([^/]+)/sampler_weights/([^/]+)")
EPHEMERAL_ID = re.compile(r"[A-Za-z0-9._:-]+")


safe = safe_name  # the folder name of a run or snapshot key


class SnapshotStore:
    def __init__(self, root: Path, backend: str, max_loaded: int, make_client: Callable[[str], Any]) -> None:
        self.root = root
        self.backend = backend
        self.max_loaded = max(1, int(max_loaded))
        self._make_client = make_client
        self._lock = threading.RLock()
        self._loaded: "OrderedDict[str, Any]" = OrderedDict()  # key -> sampling client
        self._hosts: dict[str, Any] = {}  # (base, lora shape) -> AdapterHost
        self._sources: dict[str, Any] = {}  # (base, lora shape) -> a training client to build from
        self._ephemeral: dict[str, list[str]] = {}  # model_id -> ephemeral keys, oldest first
        shutil.rmtree(self.root / "ephemeral", ignore_errors=True)  # unnamed snapshots do not outlive the server

    # ---- layout ---------------------------------------------------------------------
    def folder(self, key: str) -> Path:
        m = SAMPLER_PATH.fullmatch(key)
        if m:
            return self.root / "runs" / safe(m.group(1)) / "sampler_weights" / safe(m.group(2))
        return self.root / "ephemeral" / safe(key)

    def meta(self, key: str) -> dict[str, Any] | None:
        f = self.folder(key) / META
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            return None

    def exists(self, key: str) -> bool:
        return self.meta(key) is not None

    @staticmethod
    def _shape_key(base_model: str, lora: dict[str, Any]) -> str:
        keep = {k: lora.get(k) for k in ("rank", "alpha", "train_mlp", "train_attn", "train_unembed", "target_modules")}
        return json.dumps([base_model, keep], sort_keys=True, default=str)

    # ---- save -----------------------------------------------------------------------
    def save(self, worker: Any, key: str, *, ephemeral: bool) -> dict[str, Any]:
        """Write ``worker``'s current weights as snapshot ``key`` (runs on the model's thread)."""
        folder = self.folder(key)
        tmp = temp_sibling(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta: dict[str, Any] = {"key": key, "model_id": worker.model_id, "base_model": worker.base_model,
                                "lora": asdict(worker.lora), "seed": worker.seed, "step": worker.steps,
                                "backend": self.backend, "created": time.time(), "extra": worker.extra}
        sampler: Any
        if self.backend == "local":
            from kitchen.adapters.local import snapshots as snap

            kind, tensors = snap.capture(worker.client)
            snap.write(tensors, tmp)
            meta["kind"] = kind
            meta["bytes"] = int(sum(t.numel() * t.element_size() for t in tensors.values()))
            shape = self._shape_key(worker.base_model, meta["lora"])
            with self._lock:
                self._sources.setdefault(shape, worker.client)
            sampler = self._sampler_from(meta, tensors)
        else:
            meta["kind"] = "noop"
            meta["bytes"] = 0
            sampler = self._sampler_from(meta, None)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))  # inside the folder published next
        atomic_publish_dir(tmp, folder)
        with self._lock:
            self._remember(key, sampler)
            if ephemeral:
                keys = self._ephemeral.setdefault(worker.model_id, [])
                keys.append(key)
                while len(keys) > EPHEMERAL_KEEP:
                    self._drop(keys.pop(0))
        return meta

    # ---- load -----------------------------------------------------------------------
    def get(self, key: str) -> Any:
        """The sampling client for ``key`` (loaded from disk if it was evicted)."""
        with self._lock:
            client = self._loaded.get(key)
            if client is not None:
                self._loaded.move_to_end(key)
                return client
        meta = self.meta(key)
        if meta is None:
            if SAMPLER_PATH.fullmatch(key):
                raise RequestError(404, f"sampler weights {key!r} not found on this server (save them with "
                                        "save_weights_for_sampler; deleted ones are gone)")
            raise RequestError(410, f"sampling session {key!r} is gone: kitchen serve keeps the newest {EPHEMERAL_KEEP} "
                                    "unnamed snapshots per model; save named sampler weights to keep one longer")
        tensors = None
        if meta.get("kind") in ("lora", "full"):
            from kitchen.adapters.local import snapshots as snap

            tensors = snap.read(self.folder(key))
        client = self._sampler_from(meta, tensors)
        with self._lock:
            self._remember(key, client)
        return client

    def _sampler_from(self, meta: dict[str, Any], tensors: dict[str, Any] | None) -> Any:
        kind = meta.get("kind")
        if kind == "noop":
            from kitchen.adapters.noop.training import NoopSamplingClient

            return NoopSamplingClient(int(meta.get("seed", 0)), version=int(meta.get("step", 0)))
        from kitchen.adapters.local import snapshots as snap

        shape = self._shape_key(meta["base_model"], meta["lora"])
        source = self._source(shape, meta)
        if kind == "full":
            return snap.full_sampler(source, tensors)
        with self._lock:
            host = self._hosts.get(shape)
            if host is None:
                host = self._hosts[shape] = snap.AdapterHost(source)
        return snap.AdapterSampler(host, tensors)

    def _source(self, shape: str, meta: dict[str, Any]) -> Any:
        """A started training client of this (base, LoRA shape) to build samplers from."""
        with self._lock:
            src = self._sources.get(shape)
        if src is not None:
            return src
        lora = LoraConfig(**{k: v for k, v in meta["lora"].items() if k in LoraConfig.__dataclass_fields__})
        client = self._make_client(self.backend)
        extra = meta.get("extra") or {}
        kw = {k: str(extra[k]) for k in ("dtype", "device", "precision") if extra.get(k)}
        with START_LOCK:  # start_session reseeds the global RNG (see kitchen.serve.backends)
            client.start_session(SessionConfig(base_model=meta["base_model"], lora=lora, seed=int(meta.get("seed", 0)), **kw))
        with self._lock:
            return self._sources.setdefault(shape, client)

    def _remember(self, key: str, client: Any) -> None:
        self._loaded[key] = client
        self._loaded.move_to_end(key)
        while len(self._loaded) > self.max_loaded:
            old, _ = self._loaded.popitem(last=False)
            log.debug("sampler %s evicted from memory (still on disk)", old)

    def _drop(self, key: str) -> None:
        self._loaded.pop(key, None)
        shutil.rmtree(self.folder(key), ignore_errors=True)

    # ---- listing / deleting ---------------------------------------------------------
    def delete(self, key: str) -> bool:
        with self._lock:
            found = self.folder(key).exists()
            self._drop(key)
        return found

    def list_for(self, model_id: str) -> list[dict[str, Any]]:
        base = self.root / "runs" / safe(model_id) / "sampler_weights"
        out = []
        for m in sorted(base.glob(f"*/{META}")):
            try:
                out.append(json.loads(m.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def tensors(self) -> list[Any]:
        """The tensors behind the loaded samplers, their adapter hosts and source sessions (memory reports)."""
        from kitchen.adapters.local.shared_base import module_tensors

        with self._lock:
            samplers = list(self._loaded.values())
            hosts = list(self._hosts.values())
            sources = list(self._sources.values())
        out: list[Any] = []
        for s in samplers:
            out += list(s.tensors.values()) if isinstance(getattr(s, "tensors", None), dict) else module_tensors(getattr(s, "model", None))
        for h in hosts:
            out += module_tensors(h.client.model)
        for c in sources:
            out += module_tensors(getattr(c, "model", None))
        return out

    def loaded_count(self) -> int:
        with self._lock:
            return len(self._loaded)
