"""Server-side state for ``kitchen serve``: sessions, models, samplers, runs and checkpoints.

The threads that run queued work are :mod:`kitchen.serve.workers`, futures
:mod:`kitchen.serve.futures`, sampler weights :mod:`kitchen.serve.snapshots`. What a
client was told exists is on disk under ``--state-dir`` (run.json per model, checkpoint
metadata), so it survives a restart; sessions, models and futures live in memory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from kitchen.io.atomic import atomic_write_json
from kitchen.serve.backends import make_backend
from kitchen.serve.errors import RequestError, check_checkpoint_name, safe_name
from kitchen.serve.futures import FutureRecord, FutureTable
from kitchen.serve.ownership import current_owner
from kitchen.serve.private_files import make_private_dir
from kitchen.serve.sample_budget import SampleBudget
from kitchen.serve.snapshots import SAMPLER_PATH, SnapshotStore
from kitchen.serve.workers import ModelWorker, SamplingWorker, start_base_sampler

log = logging.getLogger("kitchen.serve")


@dataclass(frozen=True)
class WorkLimits:
    """The bounds on work the state enforces (flags of the same names; see options.py)."""

    max_sample_tokens_per_request: int = 262_144
    max_sample_tokens_in_flight: int = 1_048_576
    result_ttl_s: float = 600.0
    max_models_per_session: int = 64
    max_models: int = 256


@dataclass
class SamplerRecord:
    sampler_id: str
    base_model: str
    model_path: str | None  # a snapshot key (tinker:// path or unnamed id); None = the base model


class ServerState:
    def __init__(self, *, backend: str = "noop", latency_ms: float = 0.0, state_dir: str | os.PathLike[str] | None = None,
                 max_loaded_samplers: int = 4, precision: str = "fp32", limits: WorkLimits | None = None) -> None:
        import tempfile

        self.limits = limits or WorkLimits()

        self.backend = backend
        self.precision = precision  # the local backend's, for sessions whose client sends none
        self.latency_s = max(0.0, latency_ms) / 1000.0
        self.root = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="kitchen-serve-"))
        make_private_dir(self.root)
        self.lock = threading.RLock()
        self.sessions: dict[str, dict[str, Any]] = {}
        self.models: dict[str, ModelWorker] = {}
        self.unloaded: dict[str, str] = {}  # model id -> the finished session it belonged to
        self.futures = FutureTable(result_ttl_s=self.limits.result_ttl_s)
        self.sample_budget = SampleBudget(self.limits.max_sample_tokens_per_request, self.limits.max_sample_tokens_in_flight)
        self.stopping = False
        self.samplers: dict[str, SamplerRecord] = {}
        self.snapshots = SnapshotStore(self.root, backend, max_loaded_samplers, make_backend)
        self.base_samplers: dict[str, Any] = {}
        self.sampling = SamplingWorker()

    # ---- futures -------------------------------------------------------------------
    def new_future(self, model_id: str | None, cancellable: bool = True) -> FutureRecord:
        if self.stopping:
            raise RequestError(503, "kitchen serve is shutting down and takes no new work; retry against a running server",
                               {"Retry-After": "5"})
        return self.futures.new(model_id, cancellable=cancellable, owner=current_owner())

    def wait_future(self, request_id: str) -> FutureRecord | None:
        return self.futures.wait(request_id)

    # ---- sessions / models ------------------------------------------------------------
    def new_session(self, body: dict[str, Any]) -> str:
        session_id = f"kitchen-{uuid.uuid4().hex[:12]}"
        with self.lock:
            self.sessions[session_id] = {"created": time.time(), "metadata": body.get("user_metadata") or {},
                                         "owner": current_owner()}
        return session_id

    def model(self, model_id: str) -> ModelWorker:
        with self.lock:
            worker = self.models.get(model_id)
            finished = self.unloaded.get(model_id)
        if worker is None and finished is not None:
            raise RequestError(400, f"model {model_id!r} was unloaded when its session {finished} finished "
                                    "(ServiceClient.close, or the end of its `with` block). What it saved stays on this "
                                    "server: create a new training client from one of its checkpoints.")
        if worker is None:
            raise RequestError(404, f"unknown model_id {model_id!r}")
        return worker

    def live_session(self, session_id: str) -> None:
        """Refuse a session that does not exist or has finished (Tinker: a finished session is terminal)."""
        with self.lock:
            info = self.sessions.get(session_id)
        if info is None:
            raise RequestError(404, f"unknown session_id {session_id!r}; create a session first")
        if info.get("finished"):
            raise RequestError(400, f"session {session_id} has finished ({info['finished']}); start a new ServiceClient")

    def finish_session(self, session_id: str, reason: str) -> list[str]:
        """End a session, as ``ServiceClient.close`` asks: its training models are unloaded
        once the requests already queued on them have run. Why: a long-lived server sees
        many runs, and each LoRA session holds its adapter, optimizer state and a module
        tree over the shared base. Everything it saved (checkpoints, sampler weights, run
        metadata) is on disk under --state-dir and stays loadable."""
        with self.lock:
            info = self.sessions.get(session_id)
            if info is None:
                # Sessions live in memory: one opened before a server restart is unknown now, and
                # its client's close (at the end of its `with` block) must not fail the user's run.
                return []
            info.setdefault("finished", reason or "finished")
            prefix = f"{session_id}:"  # model ids are "<session>:train:<seq>" (create_model, load_weights)
            gone = [w for mid, w in self.models.items() if mid.startswith(prefix)]
            for w in gone:
                del self.models[w.model_id]
                self.unloaded[w.model_id] = session_id
        for w in gone:
            w.stop()
        return [w.model_id for w in gone]

    def add_model(self, worker: ModelWorker, user_metadata: dict[str, Any] | None = None) -> None:
        """Admit a model: the duplicate check and the model caps first, then its thread starts."""
        session = worker.model_id.split(":", 1)[0]
        with self.lock:
            if worker.model_id in self.models:
                raise RequestError(409, f"model {worker.model_id!r} already exists")
            if len(self.models) >= self.limits.max_models:
                raise RequestError(429, f"this server holds {len(self.models)} training models, its limit "
                                        "(kitchen serve --max-models); finish a session (ServiceClient.close) to free one",
                                   {"Retry-After": "30"})
            prefix = session + ":"
            mine = sum(1 for mid in self.models if mid.startswith(prefix))
            if mine >= self.limits.max_models_per_session:
                raise RequestError(400, f"session {session} already has {mine} training models, the limit per session "
                                        "(kitchen serve --max-models-per-session); use a new ServiceClient for more")
            self.models[worker.model_id] = worker
            worker.launch()
        now = time.time()
        self._write_run(worker.model_id, {
            "training_run_id": worker.model_id, "base_model": worker.base_model, "lora": asdict(worker.lora),
            "seed": worker.seed, "backend": worker.backend_kind, "created": now, "last_request_time": now,
            "user_metadata": {str(k): str(v) for k, v in (user_metadata or {}).items()},
            "owner": current_owner(),
        })

    # ---- training runs (run.json per model, so they survive a restart) ----------------
    def _run_file(self, run_id: str) -> Path:
        return self.ckpt_root() / safe_name(run_id) / "run.json"

    def _write_run(self, run_id: str, data: dict[str, Any]) -> None:
        atomic_write_json(self._run_file(run_id), data)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._run_file(run_id).read_text())
        except (OSError, ValueError):
            return None

    def touch_run(self, run_id: str, **fields: Any) -> None:
        with self.lock:
            run = self.get_run(run_id)
            if run is not None:
                run.update(fields, last_request_time=time.time())
                self._write_run(run_id, run)

    def owner_of(self, session_id: str, run_id: str) -> str | None:
        """The owner of a session (in memory) or, after a restart, of its run (run.json); None = unowned."""
        with self.lock:
            info = self.sessions.get(session_id)
        if info is not None and info.get("owner") is not None:
            return info["owner"]
        run = self.get_run(run_id)
        return run.get("owner") if run else None

    def list_runs(self) -> list[dict[str, Any]]:
        """Every training run, newest first; with several keys, those of the request's key (and unowned ones)."""
        owner = current_owner()
        runs = []
        for f in self.ckpt_root().glob("*/run.json"):
            try:
                run = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if owner is None or run.get("owner") in (None, owner):
                runs.append(run)
        return sorted(runs, key=lambda r: r.get("created", 0), reverse=True)

    def training_checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        out = []
        for f in sorted((self.ckpt_root() / safe_name(run_id) / "weights").glob("*.kitchen.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def weight_bytes(self) -> int:
        """Bytes of model weights in memory: every training model, sampler and base sampler,
        with a storage shared between them (the LoRA sessions' one frozen base) counted once."""
        if self.backend != "local":
            return 0
        from kitchen.adapters.local.shared_base import distinct_tensor_bytes, module_tensors

        with self.lock:
            clients = [w.client for w in self.models.values()]
            bases = list(self.base_samplers.values())
        tensors: list[Any] = []
        for c in clients:
            tensors += module_tensors(getattr(c, "model", None))
        for b in bases:
            tensors += module_tensors(b.model)
        return distinct_tensor_bytes(tensors + self.snapshots.tensors())

    def pending_futures(self) -> int:
        return self.futures.pending()

    # ---- checkpoints ----------------------------------------------------------------
    def ckpt_root(self) -> Path:
        return self.root / "runs"

    def state_path(self, model_id: str, name: str) -> str:
        return f"tinker://{model_id}/weights/{name}"

    def sampler_path(self, model_id: str, name: str) -> str:
        return f"tinker://{model_id}/sampler_weights/{name}"

    def resolve_state(self, tinker_path: str) -> tuple[Path, dict[str, Any]]:
        m = re.fullmatch(r"tinker://([^/]+)/weights/([^/]+)", tinker_path or "")
        if not m:
            raise RequestError(400, f"not a training-state path: {tinker_path!r} (expected tinker://RUN/weights/NAME)")
        run, name = m.group(1), m.group(2)
        check_checkpoint_name(name)
        base = self.ckpt_root() / safe_name(run) / "weights"
        meta_file = base / f"{name}.kitchen.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            raise RequestError(404, f"checkpoint {tinker_path!r} not found on this server") from None
        return base / name, meta

    def delete_state(self, tinker_path: str) -> bool:
        import shutil

        local, _ = self.resolve_state(tinker_path)
        (local.parent / f"{local.name}.kitchen.json").unlink(missing_ok=True)
        shutil.rmtree(local, ignore_errors=True)
        return True

    def check_sampler_path(self, path: str) -> None:
        m = SAMPLER_PATH.fullmatch(path or "")
        if not m:
            raise RequestError(400, f"not a sampler weights path: {path!r} (expected tinker://RUN/sampler_weights/NAME)")
        check_checkpoint_name(m.group(2), "sampler weights name")

    # ---- sampling worker --------------------------------------------------------------
    def submit_sample(self, rec: FutureRecord, fn: Callable[[], Any], client: str = "") -> None:
        """Queue sampling work; clients (sessions) take turns, so one client's flood cannot starve another."""
        self.sampling.submit(rec, fn, client)

    def base_sampler(self, base_model: str) -> Any:
        with self.lock:
            if base_model in self.base_samplers:
                return self.base_samplers[base_model]
        sampler = start_base_sampler(self.backend, base_model)
        with self.lock:
            self.base_samplers[base_model] = sampler
        return sampler

    def shutdown(self, drain_s: float = 0.0, cancel_queued: bool = False) -> bool:
        """Stop the workers: no new work, then wait up to ``drain_s`` for what runs; True
        when every worker thread ended in time.

        ``cancel_queued`` finishes queued-but-not-started work with a shutdown error
        instead of running it (SIGTERM: the bound is --shutdown-timeout-s, and a queue of
        samples could take hours). Everything a client was told exists is already on disk
        (checkpoints, sampler weights, run.json are written before their futures finish);
        waiting lets an in-flight save complete instead of being cut off.
        """
        self.stopping = True
        with self.lock:
            workers = list(self.models.values())
        for w in workers:
            w.stop()
        self.sampling.close()
        if cancel_queued:
            dropped = sum(w.cancel_queued() for w in workers) + self.sampling.cancel_queued()
            if dropped:
                log.warning("shutdown: %d queued request(s) cancelled", dropped)
        deadline = time.monotonic() + drain_s
        for t in [*workers, self.sampling]:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in [*workers, self.sampling])
