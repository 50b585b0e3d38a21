"""Server-side state for ``kitchen serve``: sessions, models, futures, samplers, checkpoints.

Every created model is backed by one kitchen ``TrainingClient`` and owns one worker
thread that runs its requests strictly in arrival order (the SDK sends a model's requests
one turn at a time, so arrival order is seq_id order). A request's HTTP call returns at
once with a future id; ``retrieve_future`` long-polls for the result. That is the Tinker
async-future protocol, and it is what lets a client keep several steps in flight.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from kitchen.serve.errors import START_LOCK, RequestError
from kitchen.errors import KitchenError
from kitchen.serve.fair_queue import FairQueue
from kitchen.ports.types import LoraConfig, SessionConfig

log = logging.getLogger("kitchen.serve")

LONG_POLL_S = 20.0  # < the SDK's 45 s retrieve_future timeout
MAX_FUTURES = 20000



@dataclass
class FutureRecord:
    request_id: str
    model_id: str | None
    event: threading.Event = field(default_factory=threading.Event)
    ready_at: float = 0.0
    payload: bytes | None = None  # proto bytes
    json_body: dict[str, Any] | None = None
    error: str | None = None
    category: str = "server"

    def finish(self, *, latency_s: float, payload: bytes | None = None, json_body: dict | None = None,
               error: str | None = None, category: str = "server") -> None:
        self.payload, self.json_body, self.error, self.category = payload, json_body, error, category
        self.ready_at = time.monotonic() + latency_s
        self.event.set()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


# One rule for checkpoint names at save and at load: a name that saves always loads.
CHECKPOINT_NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_checkpoint_name(name: str, what: str = "checkpoint name") -> None:
    if not isinstance(name, str) or not CHECKPOINT_NAME_RULE.fullmatch(name):
        raise RequestError(400, f"{what} {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit (no spaces, ':' or '/')")


def make_backend(kind: str) -> Any:
    """A fresh kitchen TrainingClient for one served model."""
    if kind == "noop":
        from kitchen.adapters.noop.training import NoopTrainingClient

        return NoopTrainingClient()
    if kind == "local":
        try:
            from kitchen.adapters.local import LocalTrainingClient
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise KitchenError(f"kitchen serve --backend local needs the local torch backend: {exc}") from exc
        return LocalTrainingClient()
    raise KitchenError(f"unknown serve backend {kind!r}; use 'local' or 'noop'")


_START_LOCK = START_LOCK  # shared with snapshots (kitchen.serve.errors)


class ModelWorker:
    """One served model: its kitchen TrainingClient and the thread that runs its requests in order."""

    def __init__(self, model_id: str, base_model: str, lora: LoraConfig, seed: int, backend: str,
                 ckpt_root: Path, extra: dict[str, Any]) -> None:
        self.model_id = model_id
        self.base_model = base_model
        self.lora = lora
        self.seed = seed
        self.backend_kind = backend
        self.extra = extra
        self.client: Any = None
        self.steps = 0
        self.tokenizer_id: str | None = None
        self.ckpt_dir = ckpt_root / _safe(model_id)
        self._queue: "queue.Queue[tuple[FutureRecord, Callable[[], Any]] | None]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"model-{model_id}", daemon=True)
        self._thread.start()

    def session_config(self) -> SessionConfig:
        kw: dict[str, Any] = {}
        for key in ("dtype", "device"):
            if self.extra.get(key):
                kw[key] = str(self.extra[key])
        if self.extra.get("max_length"):
            kw["max_length"] = int(self.extra["max_length"])
        return SessionConfig(base_model=self.base_model, lora=self.lora, seed=self.seed, **kw)

    def start(self) -> dict[str, Any]:
        client = make_backend(self.backend_kind)
        if hasattr(client, "set_checkpoint_dir"):
            client.set_checkpoint_dir(self.ckpt_dir / "weights")
        # One session start at a time: start_session seeds the process-global torch RNG and
        # then draws the LoRA init from it, so two concurrent starts would take each
        # other's random numbers (same first loss, different runs after).
        with _START_LOCK:
            facts = client.start_session(self.session_config())
        self.client = client
        return facts

    def submit(self, rec: FutureRecord, fn: Callable[[], Any]) -> None:
        self._queue.put((rec, fn))

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self.client = None  # unloaded: its adapter, optimizer state and base view can be freed
                return
            rec, fn = item
            try:
                fn()
            except Exception as exc:  # the request fails; the model keeps serving
                category = "user" if isinstance(exc, (KitchenError, ValueError, KeyError, IndexError, RequestError)) else "server"
                log.warning("request %s on %s failed: %s", rec.request_id, self.model_id, exc, exc_info=category == "server")
                msg = exc.message if isinstance(exc, RequestError) else f"{type(exc).__name__}: {exc}"
                rec.finish(latency_s=0.0, error=msg, category=category)


@dataclass
class SamplerRecord:
    sampler_id: str
    base_model: str
    model_path: str | None  # a snapshot key (tinker:// path or unnamed id); None = the base model


class ServerState:
    def __init__(self, *, backend: str = "noop", latency_ms: float = 0.0, state_dir: str | os.PathLike[str] | None = None,
                 max_loaded_samplers: int = 4) -> None:
        import tempfile

        from kitchen.serve.snapshots import SnapshotStore

        self.backend = backend
        self.latency_s = max(0.0, latency_ms) / 1000.0
        self.root = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="kitchen-serve-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.sessions: dict[str, dict[str, Any]] = {}
        self.models: dict[str, ModelWorker] = {}
        self.unloaded: dict[str, str] = {}  # model id -> the finished session it belonged to
        self.futures: "OrderedDict[str, FutureRecord]" = OrderedDict()
        self.samplers: dict[str, SamplerRecord] = {}
        self.snapshots = SnapshotStore(self.root, backend, max_loaded_samplers, make_backend)
        self.base_samplers: dict[str, Any] = {}
        self._sample_queue: "FairQueue[tuple[FutureRecord, Callable[[], Any]]]" = FairQueue()  # round robin per client
        self._sample_thread = threading.Thread(target=self._sample_loop, name="sampler", daemon=True)
        self._sample_thread.start()

    # ---- futures -------------------------------------------------------------------
    def new_future(self, model_id: str | None) -> FutureRecord:
        rec = FutureRecord(request_id=uuid.uuid4().hex, model_id=model_id)
        with self.lock:
            self.futures[rec.request_id] = rec
            while len(self.futures) > MAX_FUTURES:
                self.futures.popitem(last=False)
        return rec

    def wait_future(self, request_id: str, timeout: float = LONG_POLL_S) -> FutureRecord | None:
        """The finished record, or None when still pending after ``timeout`` (long poll)."""
        with self.lock:
            rec = self.futures.get(request_id)
        if rec is None:
            raise RequestError(404, f"unknown request_id {request_id!r} (futures are kept in server memory; was the server restarted?)")
        deadline = time.monotonic() + timeout
        if not rec.event.wait(timeout):
            return None
        delay = rec.ready_at - time.monotonic()
        if delay > 0:
            if time.monotonic() + delay > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return None
            time.sleep(delay)
        return rec

    # ---- sessions / models ------------------------------------------------------------
    def new_session(self, body: dict[str, Any]) -> str:
        session_id = f"kitchen-{uuid.uuid4().hex[:12]}"
        with self.lock:
            self.sessions[session_id] = {"created": time.time(), "metadata": body.get("user_metadata") or {}}
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
        with self.lock:
            if worker.model_id in self.models:
                raise RequestError(409, f"model {worker.model_id!r} already exists")
            self.models[worker.model_id] = worker
        now = time.time()
        self._write_run(worker.model_id, {
            "training_run_id": worker.model_id, "base_model": worker.base_model, "lora": asdict(worker.lora),
            "seed": worker.seed, "backend": worker.backend_kind, "created": now, "last_request_time": now,
            "user_metadata": {str(k): str(v) for k, v in (user_metadata or {}).items()},
        })

    # ---- training runs (run.json per model, so they survive a restart) ----------------
    def _run_file(self, run_id: str) -> Path:
        return self.ckpt_root() / _safe(run_id) / "run.json"

    def _write_run(self, run_id: str, data: dict[str, Any]) -> None:
        f = self._run_file(run_id)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"run.json.tmp{uuid.uuid4().hex[:6]}")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, f)

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

    def list_runs(self) -> list[dict[str, Any]]:
        runs = []
        for f in self.ckpt_root().glob("*/run.json"):
            try:
                runs.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(runs, key=lambda r: r.get("created", 0), reverse=True)

    def training_checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        out = []
        for f in sorted((self.ckpt_root() / _safe(run_id) / "weights").glob("*.kitchen.json")):
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
        with self.lock:
            return sum(1 for f in self.futures.values() if not f.event.is_set())

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
        base = self.ckpt_root() / _safe(run) / "weights"
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
        from kitchen.serve.snapshots import SAMPLER_PATH

        m = SAMPLER_PATH.fullmatch(path or "")
        if not m:
            raise RequestError(400, f"not a sampler weights path: {path!r} (expected tinker://RUN/sampler_weights/NAME)")
        check_checkpoint_name(m.group(2), "sampler weights name")

    # ---- sampling worker --------------------------------------------------------------
    def submit_sample(self, rec: FutureRecord, fn: Callable[[], Any], client: str = "") -> None:
        """Queue sampling work; clients (sessions) take turns, so one client's flood cannot starve another."""
        self._sample_queue.put(client, (rec, fn))

    def _sample_loop(self) -> None:
        while True:
            item = self._sample_queue.get()
            if item is None:
                return
            rec, fn = item
            try:
                fn()
            except Exception as exc:
                category = "user" if isinstance(exc, (KitchenError, ValueError, RequestError)) else "server"
                log.warning("sample request %s failed: %s", rec.request_id, exc)
                msg = exc.message if isinstance(exc, RequestError) else f"{type(exc).__name__}: {exc}"
                rec.finish(latency_s=0.0, error=msg, category=category)

    def base_sampler(self, base_model: str) -> Any:
        with self.lock:
            if base_model in self.base_samplers:
                return self.base_samplers[base_model]
        client = make_backend(self.backend)
        with _START_LOCK:  # start_session reseeds the global RNG (see ModelWorker.start)
            client.start_session(SessionConfig(base_model=base_model))
        sampler = client.sampling_client(base_model=base_model)
        with self.lock:
            self.base_samplers[base_model] = sampler
        return sampler

    def shutdown(self, drain_s: float = 0.0) -> None:
        """Stop the workers after the work already queued (waiting up to ``drain_s``).

        Everything a client was told exists is already on disk (checkpoints, sampler
        weights, run.json are written before their futures finish); draining lets an
        in-flight save complete instead of being cut off.
        """
        with self.lock:
            workers = list(self.models.values())
        for w in workers:
            w.stop()
        self._sample_queue.close()
        deadline = time.monotonic() + drain_s
        for t in [w._thread for w in workers] + [self._sample_thread]:
            t.join(max(0.0, deadline - time.monotonic()))
