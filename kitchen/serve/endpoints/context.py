"""What every endpoint group shares: the server state, and the one way a request becomes a future.

A queued endpoint validates its request on the HTTP worker thread (a bad request is an
immediate 4xx), then hands :meth:`ServeContext.on_model` or :meth:`ServeContext.on_sampler`
a function that does the work and returns its result: a dict (a JSON result) or bytes
(a protobuf result). The context creates the future, queues the work on the model's
thread (or the sampling thread), finishes the future with the result after the
configured latency, and answers the client with the future's id at once.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import threading
from typing import Any, Callable

import pydantic

from kitchen.io.atomic import atomic_publish_dir, temp_sibling
from kitchen.ports.tinker_ext import NOOP_TOKENIZER_ID
from kitchen.serve.errors import RequestError
from kitchen.serve.external import ExternalWeights
from kitchen.serve.futures import FutureRecord
from kitchen.serve.model_names import served_name
from kitchen.serve.state import ServerState
from kitchen.serve.workers import ModelWorker

PROTO = "application/x-protobuf"
Result = dict[str, Any] | bytes


def parse(model_cls: type[pydantic.BaseModel], body: Any, extra_names: tuple[str, ...] = ()) -> Any:
    """Validate a JSON body against the SDK's own request type (unknown keys are dropped)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"expected a JSON object for {model_cls.__name__}")
    known = set(model_cls.model_fields) | set(extra_names)
    try:
        return model_cls.model_validate({k: v for k, v in body.items() if k in known})
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise RequestError(400, f"bad {model_cls.__name__}: {problems}") from None


def iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(float(ts or 0), tz=_dt.timezone.utc).isoformat()


def untyped(rec: FutureRecord) -> dict[str, Any]:
    """The SDK's UntypedAPIFuture: what a queued endpoint answers at once."""
    return {"request_id": rec.request_id, "model_id": rec.model_id}


class ServeContext:
    def __init__(self, state: ServerState, external: ExternalWeights, models: dict[str, str]) -> None:
        self.state = state
        self.external = external
        self.models = models  # canonical name -> advertised name
        self._tok_lock = threading.Lock()
        # the address signed download URLs name (--public-url, else the bind address; set by
        # the server once it is bound); None only for an app served without run_server
        self.public_url: str | None = None
        self._vocab: dict[str, int] = {}  # base model -> rows of its input embedding, once a model of it loaded

    # ---- queued work -------------------------------------------------------------------
    def _finisher(self, rec: FutureRecord, work: Callable[[], Result],
                  release: Callable[[], None] | None = None) -> Callable[[], None]:
        """The job a worker runs: skipped when its future was cancelled while queued;
        ``release`` (the sampling budget's tokens) runs however it ends."""
        latency_s = self.state.latency_s

        def run() -> None:
            try:
                if rec.cancelled:
                    return
                out = work()
                if isinstance(out, (bytes, bytearray)):
                    rec.finish(latency_s=latency_s, payload=bytes(out))
                else:
                    rec.finish(latency_s=latency_s, json_body=out)
            finally:
                if release is not None:
                    release()

        return run

    def on_model(self, worker: ModelWorker, work: Callable[[], Result], cancellable: bool = True) -> dict[str, Any]:
        """Queue ``work`` on the model's thread (in arrival order); answer with its future.

        ``cancellable=False`` for the work a model cannot do without (its creation, a load
        that creates it): cancelling those would leave a model with no backend behind.
        """
        rec = self.state.new_future(worker.model_id, cancellable=cancellable)
        worker.submit(rec, self._finisher(rec, work))
        return untyped(rec)

    def on_sampler(self, work: Callable[[], Result], client: str, cost: int = 0) -> FutureRecord:
        """Queue ``work`` on the sampling thread, in ``client``'s turn; its future. ``cost``
        tokens were reserved from the sampling budget and are released when it ends."""
        rec = self.state.new_future(None)
        budget = self.state.sample_budget
        released = threading.Event()

        def release() -> None:
            if cost and not released.is_set():
                released.set()
                budget.release(cost)

        try:
            self.state.submit_sample(rec, self._finisher(rec, work, release), client=client)
        except BaseException:
            release()
            raise
        return rec

    # ---- models ------------------------------------------------------------------------
    def served_name(self, requested: str) -> str:
        return served_name(self.models, self.state.backend, requested)

    def start_worker(self, worker: ModelWorker) -> None:
        """Start the model's backend session (on its own thread) and publish its tokenizer."""
        worker.start()
        worker.tokenizer_id = self._tokenizer_id(worker)
        self.learn_vocab(worker.base_model, worker.client)

    def learn_vocab(self, base_model: str, client: Any) -> None:
        """Remember ``base_model``'s vocabulary size from a loaded client (its input embedding's rows)."""
        if base_model in self._vocab:
            return
        size = getattr(getattr(client, "session", None), "vocab_size", None)
        if size is None:
            model = getattr(client, "model", None)
            emb = model.get_input_embeddings() if model is not None and hasattr(model, "get_input_embeddings") else None
            size = int(emb.weight.shape[0]) if emb is not None else None
        if size is not None:
            self._vocab[base_model] = int(size)

    def vocab_size(self, base_model: str) -> int | None:
        """The token ids ``base_model`` takes (0 .. n-1), or None before any model of it loaded
        (then only negative ids are refused at the wire, and the backend checks the rest)."""
        if self.state.backend == "noop":
            from kitchen.adapters.noop.training import ByteTokenizer

            return ByteTokenizer.vocab_size
        return self._vocab.get(base_model)

    def _tokenizer_id(self, worker: ModelWorker) -> str:
        """Where the SDK's get_tokenizer() finds the tokenizer.

        The SDK calls ``AutoTokenizer.from_pretrained(tokenizer_id)``, which would go to the
        Hugging Face Hub for a model name. We save the backend's tokenizer to a local
        directory once and hand out its absolute path, so it loads offline (client and
        server share the filesystem on loopback). The noop backend's byte tokenizer has
        no HF form; its id is a marker the kitchen adapter understands.
        """
        tok = worker.client.get_tokenizer()
        if not hasattr(tok, "save_pretrained"):
            return NOOP_TOKENIZER_ID
        target = self.state.root / "tokenizers" / worker.base_model.replace("/", "--")
        with self._tok_lock:
            if not (target / "tokenizer_config.json").exists():
                tmp = temp_sibling(target)
                shutil.rmtree(tmp, ignore_errors=True)
                tok.save_pretrained(str(tmp))
                atomic_publish_dir(tmp, target, replace=False)
        return str(target.resolve())
