"""The threads that run queued work: one per training model, one for sampling.

Every created model is backed by one kitchen ``TrainingClient`` and owns one worker
thread that runs its requests strictly in arrival order (the SDK sends a model's requests
one turn at a time, so arrival order is seq_id order). Sampling work from every client
goes through one thread, with clients taking turns (:mod:`kitchen.serve.fair_queue`).
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any, Callable

from kitchen.errors import KitchenError
from kitchen.ports.types import LoraConfig, SessionConfig
from kitchen.serve.backends import START_LOCK, make_backend
from kitchen.serve.errors import RequestError, safe_name
from kitchen.serve.fair_queue import FairQueue
from kitchen.serve.futures import FutureRecord

log = logging.getLogger("kitchen.serve")

Job = tuple[FutureRecord, Callable[[], Any]]


def _fail(rec: FutureRecord, exc: Exception, user_errors: tuple[type[BaseException], ...]) -> str:
    """Finish ``rec`` with ``exc``'s message; returns its category (user / server)."""
    category = "user" if isinstance(exc, user_errors) else "server"
    msg = exc.message if isinstance(exc, RequestError) else f"{type(exc).__name__}: {exc}"
    rec.finish(latency_s=0.0, error=msg, category=category)
    return category


SHUTTING_DOWN = "kitchen serve is shutting down; this request was queued and did not run (retry against a running server)"


def _cancel_all(jobs: list[Job]) -> int:
    """Mark queued jobs cancelled and finish their futures: their work then skips itself."""
    for rec, fn in jobs:
        rec.cancelled = True
        rec.finish(latency_s=0.0, error=SHUTTING_DOWN, category="server")
        try:
            fn()  # a cancelled job only releases what it holds (see ServeContext._finisher)
        except Exception:  # noqa: BLE001 - nothing to report for a job that will not run
            pass
    return len(jobs)


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
        self.ckpt_dir = ckpt_root / safe_name(model_id)
        self._queue: "queue.Queue[Job | None]" = queue.Queue()
        # Not started here: the state starts it (:meth:`launch`) once the model passed the
        # duplicate check and the model caps, so a refused create_model leaves no thread.
        self._thread = threading.Thread(target=self._run, name=f"model-{model_id}", daemon=True)

    def launch(self) -> None:
        """Start the model's thread (once; the state calls it when the model is admitted)."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    def session_config(self) -> SessionConfig:
        kw: dict[str, Any] = {}
        for key in ("dtype", "device", "precision"):
            if self.extra.get(key):
                kw[key] = str(self.extra[key])
        if self.extra.get("max_length"):
            kw["max_length"] = int(self.extra["max_length"])
        return SessionConfig(base_model=self.base_model, lora=self.lora, seed=self.seed, **kw)

    def start(self) -> dict[str, Any]:
        client = make_backend(self.backend_kind)
        if hasattr(client, "set_checkpoint_dir"):
            client.set_checkpoint_dir(self.ckpt_dir / "weights")
        with START_LOCK:  # see kitchen.serve.backends
            facts = client.start_session(self.session_config())
        self.client = client
        return facts

    def submit(self, rec: FutureRecord, fn: Callable[[], Any]) -> None:
        self._queue.put((rec, fn))

    def stop(self) -> None:
        self._queue.put(None)

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def cancel_queued(self) -> int:
        """Finish every job still queued with a shutdown error (the server is stopping); how many."""
        return _cancel_all(self._queue_items())

    def _queue_items(self) -> list[Job]:
        items: list[Job] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                items.append(item)
        self._queue.put(None)  # the stop marker drained with them
        return items

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
                _fail(rec, exc, (KitchenError, ValueError, KeyError, IndexError, RequestError))


class SamplingWorker:
    """The sampling thread; clients (sessions) take turns, so one client's flood cannot starve another."""

    def __init__(self) -> None:
        self._queue: "FairQueue[Job]" = FairQueue()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def submit(self, rec: FutureRecord, fn: Callable[[], Any], client: str = "") -> None:
        self._queue.put(client, (rec, fn))

    def close(self) -> None:
        self._queue.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def cancel_queued(self) -> int:
        """Finish every queued sample with a shutdown error (the server is stopping); how many."""
        return _cancel_all(self._queue.drain())

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            rec, fn = item
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the request's future carries the error
                log.warning("sample request %s failed: %s", rec.request_id, exc)
                _fail(rec, exc, (KitchenError, ValueError, RequestError))


def start_base_sampler(backend: str, base_model: str) -> Any:
    """A sampling client over the plain base model."""
    client = make_backend(backend)
    with START_LOCK:  # see kitchen.serve.backends
        client.start_session(SessionConfig(base_model=base_model))
    return client.sampling_client(base_model=base_model)
