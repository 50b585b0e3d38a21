"""The TrainingClient port over the official ``tinker`` SDK (the Tinker service, or ``kitchen serve``).

* Futures: every SDK call returns an SDK future at once; we chain a
  ``concurrent.futures.Future`` onto it with a done-callback (no thread per call, no
  blocking), so the workflow can keep several steps in flight. The SDK sends one
  model's requests strictly in submission order.
* Retries: the SDK's own retries come first (transport errors, timeouts, 5xx, 429 -
  retried in order, before any later request is sent). What still fails reaches
  ``call_with_retries``: exponential backoff, up to ``max_retries``. Fatal errors
  (400/401/403/404/422, failed-by-user requests, missing key) are never retried and
  become one-paragraph ``BackendError``s. A failed training step is resubmitted only
  when no later request was sent after it (else the order of updates would change);
  otherwise it fails with a BackendError telling the user to resume.
* The API key is never held by this class: the SDK reads ``TINKER_API_KEY`` (or its
  stored credential) itself. We only check that one exists, before any work.
* ``timeout_s`` is the per-HTTP-request timeout of the SDK's training calls (the SDK
  retries a request that times out, e.g. a stalled server).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, TypeVar

from kitchen.adapters.tinker.credentials import KEY_ENV, require_api_key
from kitchen.errors import BackendError, KitchenError
from kitchen.io.atomic import atomic_write_text
from kitchen.io.secrets import redact_text, redact_url
from kitchen.ports.tinker_ext import NOOP_TOKENIZER_ID, STEP_METRIC, session_metadata
from kitchen.ports.types import (
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
    SampleResult,
    SamplingParams,
    SessionConfig,
    require_optimizer,
)

log = logging.getLogger("kitchen.tinker")
T = TypeVar("T")

POINTER_FILE = "tinker_checkpoint.json"
WEIGHTS_POINTER_FILE = "tinker_weights.json"
FATAL_STATUS = {400, 401, 403, 404, 422}


# ---------------------------------------------------------------- error classification
def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 10:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _status_of(exc: BaseException) -> int | None:
    import tinker

    for e in _chain(exc):
        if isinstance(e, tinker.APIStatusError):
            return int(e.status_code)
    return None


def _server_message(exc: BaseException) -> str:
    import tinker

    for e in _chain(exc):
        if isinstance(e, tinker.APIStatusError):
            body = e.body
            if isinstance(body, dict):
                msg = body.get("error") or body.get("detail") or body.get("message")
                if isinstance(msg, dict):
                    msg = msg.get("message")
                if msg:
                    return str(msg)
            return e.message
    return str(exc)


def is_fatal_error(exc: BaseException) -> bool:
    """True for errors a retry cannot fix: auth, not found, bad request, user errors."""
    import tinker

    if isinstance(exc, KitchenError):
        return True
    status = _status_of(exc)
    if status is not None:
        return status in FATAL_STATUS or (400 <= status < 500 and status not in (408, 409, 429))
    for e in _chain(exc):
        if isinstance(e, tinker.RequestFailedError):
            return str(e.category).lower() == "user"
        if isinstance(e, (tinker.APIConnectionError, TimeoutError, concurrent.futures.TimeoutError, ConnectionError)):
            return False
        if type(e).__name__ == "RetryableException":
            return False
        if isinstance(e, tinker.TinkerError) and "api_key" in str(e):
            return True
    return True  # anything else (a bug, a bad argument) will not get better by retrying


def call_with_retries(fn: Callable[[], T], *, max_retries: int = 3, backoff_s: float = 0.5,
                      is_fatal: Callable[[BaseException], bool] = is_fatal_error, what: str = "call",
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried on non-fatal errors with exponential backoff (backoff_s * 2**k)."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if is_fatal(exc) or attempt >= max_retries:
                raise
            delay = backoff_s * (2 ** attempt)
            attempt += 1
            log.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(exc).__name__, _server_message(exc), attempt, max_retries, delay)
            sleep(delay)


def _scrub(text: str) -> str:
    return redact_text(text, known=(os.environ.get(KEY_ENV),))


def to_backend_error(exc: BaseException, what: str, base_url: str | None, attempts: int = 0,
                     resumable: bool = False) -> KitchenError:
    """A one-paragraph, user-fixable error for ``exc`` (never containing the key)."""
    import tinker

    if isinstance(exc, KitchenError):
        return exc
    where = f"the Tinker server at {redact_url(base_url)}" if base_url else "the Tinker service"
    status = _status_of(exc)
    msg = _scrub(_server_message(exc))
    if status == 401:
        return BackendError(f"{where} rejected the API key while {what} (401: {msg}).",
                            hint=f"Set {KEY_ENV} to a valid key (for `kitchen serve`, the key it was started with).")
    if status == 403:
        return BackendError(f"{where} refused access while {what} (403: {msg}).", hint=f"Check that the key in {KEY_ENV} may use this model/project.")
    if status == 404:
        return BackendError(f"{where} could not find what was asked for while {what} (404: {msg}).",
                            hint="Check the model name or checkpoint path.")
    if status is not None and 400 <= status < 500:
        return BackendError(f"{where} rejected the request while {what} ({status}: {msg}).")
    for e in _chain(exc):
        if isinstance(e, tinker.RequestFailedError) and str(e.category).lower() == "user":
            return BackendError(f"{where} could not run the request while {what}: {_scrub(e.message)}")
        if isinstance(e, tinker.TinkerError) and "api_key" in str(e):
            return BackendError(f"The Tinker API key is missing or malformed ({_scrub(str(e))}).",
                                hint=f"Set {KEY_ENV}=tml-... in the environment.")
    tries = f" after {attempts} retries" if attempts else ""
    then = " Resume the run from its last checkpoint once it is." if resumable else " Then run it again."
    return BackendError(f"{what} failed{tries}: {type(exc).__name__}: {msg}.",
                        hint=f"Is {where} up and reachable?{then}")


# ---------------------------------------------------------------- futures plumbing
class _Op:
    __slots__ = ("kind", "what", "submit", "convert", "future", "attempts", "index", "ordered")

    def __init__(self, kind: str, what: str, submit: Callable[[], Any], convert: Callable[[Any], Any], ordered: bool) -> None:
        self.kind, self.what, self.submit, self.convert, self.ordered = kind, what, submit, convert, ordered
        self.future: Future[Any] = Future()
        self.attempts = 0
        self.index = -1


class _OpRunner:
    """Chains kitchen futures onto SDK futures, with kitchen-level retries."""

    def __init__(self, owner: "TinkerTrainingClient") -> None:
        self.owner = owner
        self.lock = threading.Lock()
        self.submitted = 0  # ordered (training) ops sent so far

    def run(self, op: _Op) -> Future[Any]:
        self._launch(op)
        return op.future

    def _launch(self, op: _Op) -> None:
        if op.ordered:
            with self.lock:
                op.index = self.submitted
                self.submitted += 1
        try:
            sdk_future = op.submit()
            cf = sdk_future.future() if hasattr(sdk_future, "future") else sdk_future
        except Exception as exc:  # noqa: BLE001 - any SDK failure fails the op's future, classified there
            self._failed(op, exc)
            return
        cf.add_done_callback(lambda f: self._done(op, f))

    def _done(self, op: _Op, f: "concurrent.futures.Future[Any]") -> None:
        if f.cancelled():
            self._failed(op, concurrent.futures.CancelledError())
            return
        exc = f.exception()
        if exc is not None:
            self._failed(op, exc)
            return
        try:
            op.future.set_result(op.convert(f.result()))
        except Exception as conv_exc:  # noqa: BLE001 - a conversion bug fails the future instead of hanging it
            op.future.set_exception(conv_exc)

    def _failed(self, op: _Op, exc: BaseException) -> None:
        owner = self.owner
        with self.lock:
            last = (not op.ordered) or op.index == self.submitted - 1
        if not is_fatal_error(exc) and op.attempts < owner.max_retries and last:
            delay = owner.retry_backoff_s * (2 ** op.attempts)
            op.attempts += 1
            log.warning("%s failed (%s); retry %d/%d in %.1fs", op.what, _server_message(exc), op.attempts, owner.max_retries, delay)
            timer = threading.Timer(delay, self._launch, args=(op,))
            timer.daemon = True
            timer.start()
            return
        err = to_backend_error(exc, op.what, owner.base_url, op.attempts, resumable=owner.has_checkpoint())
        if not is_fatal_error(exc) and not last:
            err = BackendError(
                f"{op.what} failed ({_scrub(_server_message(exc))}) after later training requests were already sent, so it "
                "cannot be retried without changing the order of updates.",
                hint="Resume the run from its last checkpoint.",
            )
        op.future.set_exception(err)


# ---------------------------------------------------------------- clients
class TinkerSamplingClient:
    def __init__(self, sdk_sampler: Any, owner: "TinkerTrainingClient") -> None:
        self._sdk = sdk_sampler
        self._owner = owner

    def __repr__(self) -> str:
        return f"TinkerSamplingClient(base_model={getattr(self._sdk, '_base_model', None)!r})"

    def sample(self, prompt: list[int], num_samples: int, params: SamplingParams) -> Future[SampleResult]:
        from tinker import types as tt

        from kitchen.adapters.tinker.convert import sample_response_to_result, to_tinker_sampling_params

        model_input = tt.ModelInput.from_ints(list(prompt))
        sp = to_tinker_sampling_params(params)
        op = _Op("sample", "sampling", lambda: self._sdk.sample(model_input, num_samples, sp), sample_response_to_result, ordered=False)
        return self._owner._runner.run(op)

    def compute_logprobs(self, tokens: list[int]) -> Future[list[float | None]]:
        from tinker import types as tt

        model_input = tt.ModelInput.from_ints(list(tokens))

        def convert(lps: list[float | None]) -> list[float | None]:
            out = [None if x is None else float(x) for x in lps]
            if out:
                out[0] = None
            return out

        op = _Op("logprobs", "computing logprobs", lambda: self._sdk.compute_logprobs(model_input), convert, ordered=False)
        return self._owner._runner.run(op)


class TinkerTrainingClient:
    """TrainingClient port over the ``tinker`` SDK. Constructor arguments come from Hydra config."""

    def __init__(self, base_url: str | None = None, max_retries: int = 3, retry_backoff_s: float = 0.5,
                 timeout_s: float | None = None, connect_deadline_s: float | None = None) -> None:
        self.base_url = base_url or os.environ.get("TINKER_BASE_URL") or None
        self.connect_deadline_s = float(connect_deadline_s) if connect_deadline_s is not None else None
        self.max_retries = int(max_retries)
        self.retry_backoff_s = float(retry_backoff_s)
        self.timeout_s = float(timeout_s) if timeout_s else None
        self.checkpoint_dir: Path | None = None
        self.config: SessionConfig | None = None
        self._service: Any = None
        self._training: Any = None
        self._tokenizer: Any = None
        self._steps = 0
        self._runner = _OpRunner(self)

    def __repr__(self) -> str:
        return f"TinkerTrainingClient(base_url={redact_url(self.base_url) if self.base_url else None!r}, max_retries={self.max_retries}, timeout_s={self.timeout_s})"

    def __getstate__(self) -> dict[str, Any]:  # live SDK clients (and the credential they hold) never travel
        state = {k: v for k, v in self.__dict__.items() if k not in ("_service", "_training", "_tokenizer", "_runner")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._service = self._training = self._tokenizer = None
        self._runner = _OpRunner(self)

    def set_checkpoint_dir(self, path: str | os.PathLike[str]) -> None:
        self.checkpoint_dir = Path(path)

    # ---- helpers ---------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T], what: str) -> T:
        try:
            return call_with_retries(fn, max_retries=self.max_retries, backoff_s=self.retry_backoff_s, what=what)
        except Exception as exc:  # noqa: BLE001 - every SDK error becomes one BackendError paragraph
            raise to_backend_error(exc, what, self.base_url, self.max_retries if not is_fatal_error(exc) else 0,
                                   resumable=self.has_checkpoint()) from None

    def has_checkpoint(self) -> bool:
        """Whether a resume could start from somewhere (so an error may suggest one)."""
        d = self.checkpoint_dir
        return bool(d and d.is_dir() and any(d.glob("step_*")))

    def _tc(self) -> Any:
        if self._training is None:
            raise BackendError("The tinker backend has no session yet; start_session must come first.")
        return self._training

    def _apply_timeout(self, service: Any) -> None:
        """Give the SDK's training HTTP requests our timeout (the SDK has no public knob:
        we set the constructor kwargs its connection pools are built from)."""
        if self.timeout_s is None:
            return
        try:
            import httpx

            holder = service.holder
            holder._constructor_kwargs["timeout"] = httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s))
        except Exception as exc:  # noqa: BLE001 - SDK internals moved: warn and go on
            log.warning("could not apply timeout_s to the tinker SDK: %s", exc)

    def _metadata(self, config: SessionConfig) -> dict[str, str]:
        lora = config.lora
        return session_metadata({"max_length": config.max_length, "dtype": config.dtype, "device": config.device,
                                 "precision": config.precision, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout})

    # ---- port ------------------------------------------------------------------------
    def start_session(self, config: SessionConfig) -> dict[str, Any]:
        require_optimizer(config.optimizer, "tinker")  # the service's optim_step is AdamW
        require_api_key()
        if config.lora.rank <= 0:
            raise BackendError("The tinker backend trains LoRA adapters only; lora rank 0 (full fine-tuning) is not available.",
                               hint="Set a LoRA rank > 0, or use the local backend for full fine-tuning.")
        if not (config.lora.train_mlp or config.lora.train_attn or config.lora.train_unembed):
            raise BackendError("At least one of lora train_mlp, train_attn, train_unembed must be true for the tinker backend.")
        import tinker

        self.config = config
        # a dead or closed server, or the default URL without a network, is exit 2 within
        # connect_deadline_s (30 s), not a hang
        from kitchen.adapters.tinker.probe import check_reachable

        check_reachable(self.base_url, deadline_s=self.connect_deadline_s)

        def create() -> tuple[Any, Any]:
            service = tinker.ServiceClient(base_url=self.base_url)
            try:
                self._apply_timeout(service)
                training = service.create_lora_training_client(
                    base_model=config.base_model, rank=config.lora.rank, seed=config.seed,
                    train_mlp=config.lora.train_mlp, train_attn=config.lora.train_attn, train_unembed=config.lora.train_unembed,
                    user_metadata=self._metadata(config),
                ).result()
            except BaseException:
                _close_quietly(service, "errored")
                raise
            return service, training

        self._service, self._training = self._retry(create, f"opening a Tinker session on {config.base_model!r}")
        self._steps = 0
        info = self._training.get_info()
        return {"backend": "tinker", "model": config.base_model, "model_id": str(info.model_id),
                "lora_rank": info.lora_rank, "base_url": redact_url(self.base_url or "default"), "device": "remote"}

    def get_tokenizer(self) -> Any:
        if self._tokenizer is not None:
            return self._tokenizer
        tc = self._tc()
        info = tc.get_info()
        if info.model_data.tokenizer_id == NOOP_TOKENIZER_ID:
            from kitchen.adapters.noop.training import ByteTokenizer

            self._tokenizer = ByteTokenizer()
            return self._tokenizer
        try:
            self._tokenizer = tc.get_tokenizer()
        except Exception as exc:  # noqa: BLE001 - any tokenizer load failure becomes one BackendError
            raise BackendError(
                f"Could not load the tokenizer {info.model_data.tokenizer_id or info.model_data.model_name!r} for "
                f"{info.model_data.model_name!r}: {type(exc).__name__}: {exc}",
                hint="The tinker SDK loads tokenizers with transformers.AutoTokenizer, from the Hugging Face Hub or its "
                "local cache; download it once (or set HF_HUB_OFFLINE=1 with a warm cache).",
            ) from None
        return self._tokenizer

    def forward(self, data: list[Datum], loss_fn: str = "cross_entropy") -> Future[ForwardBackwardResult]:
        from kitchen.adapters.tinker.convert import fb_output_to_result, to_tinker_datum

        tdata = [to_tinker_datum(d) for d in data]
        op = _Op("forward", "forward", lambda: self._tc().forward(tdata, loss_fn), lambda out: fb_output_to_result(out, data), ordered=True)
        return self._runner.run(op)

    def forward_backward(self, data: list[Datum], loss_fn: str = "cross_entropy",
                         loss_fn_config: dict[str, float] | None = None) -> Future[ForwardBackwardResult]:
        from kitchen.adapters.tinker.convert import fb_output_to_result, to_tinker_datum

        tdata = [to_tinker_datum(d) for d in data]
        cfg = dict(loss_fn_config) if loss_fn_config else None
        op = _Op("forward_backward", "forward_backward", lambda: self._tc().forward_backward(tdata, loss_fn, cfg),
                 lambda out: fb_output_to_result(out, data), ordered=True)
        return self._runner.run(op)

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        from tinker import types as tt

        self._steps += 1
        expected = self._steps
        adam = tt.AdamParams(learning_rate=params.learning_rate, beta1=params.beta1, beta2=params.beta2, eps=params.eps,
                             weight_decay=params.weight_decay, grad_clip_norm=params.grad_clip_norm)

        def convert(resp: Any) -> OptimStepResult:
            metrics = {k: float(v) for k, v in (resp.metrics or {}).items()}
            step = int(metrics.pop(STEP_METRIC, expected))
            return OptimStepResult(step=step, metrics=metrics)

        op = _Op("optim_step", "optim_step", lambda: self._tc().optim_step(adam), convert, ordered=True)
        return self._runner.run(op)

    def save_state(self, name: str, step: int) -> CheckpointRef:
        resp = self._retry(lambda: self._tc().save_state(name, overwrite=True).result(), f"saving checkpoint {name!r}")
        ref = CheckpointRef(name=name, path=str(resp.path), step=step, kind="state")
        if self.checkpoint_dir is not None:
            target = self.checkpoint_dir / name
            target.mkdir(parents=True, exist_ok=True)
            pointer = {"tinker_path": ref.path, "step": step, "name": name,
                       "base_model": self.config.base_model if self.config else None,
                       "base_url": redact_url(self.base_url) if self.base_url else None}  # no credentials on disk
            atomic_write_text(target / POINTER_FILE, json.dumps(pointer, indent=2))
        return ref

    @staticmethod
    def _resolve_tinker_path(path: str, pointer_file: str) -> str:
        if path.startswith("tinker://"):
            return path
        candidate = Path(path)
        pointer = candidate / pointer_file if candidate.is_dir() else candidate
        if pointer.is_file():
            data = json.loads(pointer.read_text())
            if str(data.get("tinker_path", "")).startswith("tinker://"):
                return str(data["tinker_path"])
        raise BackendError(f"{path!r} is not a Tinker checkpoint: expected a tinker:// path or a directory holding {pointer_file}.")

    def load_state(self, ref: CheckpointRef, with_optimizer: bool = True) -> None:
        if self._service is None:
            raise BackendError("The tinker backend has no session yet; start_session must come first.")
        path = self._resolve_tinker_path(ref.path, POINTER_FILE)
        service = self._service
        create = service.create_training_client_from_state_with_optimizer if with_optimizer else service.create_training_client_from_state
        self._training = self._retry(lambda: create(path).result(), f"loading checkpoint {path}")
        self._steps = ref.step

    def save_weights(self, path: str) -> str:
        """Save the trained LoRA weights for sampling on the Tinker side and write a pointer.

        The SDK can only download weights saved in an external (HF) format through signed
        URLs, which ``kitchen serve`` does not offer; so the weights stay server-side and
        ``path/tinker_weights.json`` records their ``tinker://`` path (usable with
        ``ServiceClient.create_sampling_client(model_path=...)`` or as ``base_model`` of
        ``sampling_client``).
        """
        target = Path(path)
        name = f"{target.name or 'final'}-{uuid.uuid4().hex[:8]}"
        resp = self._retry(lambda: self._tc().save_weights_for_sampler(name).result(), "saving final weights")
        target.mkdir(parents=True, exist_ok=True)
        info = self._tc().get_info()
        pointer = {
            "format": "kitchen-tinker-weights-pointer/1",
            "tinker_path": str(resp.path),
            "base_model": info.model_data.model_name,
            "lora_rank": info.lora_rank,
            "base_url": redact_url(self.base_url) if self.base_url else None,  # no credentials on disk
            "note": "LoRA weights live on the Tinker server; load them with tinker.ServiceClient().create_sampling_client(model_path=tinker_path).",
        }
        (target / WEIGHTS_POINTER_FILE).write_text(json.dumps(pointer, indent=2))
        return str(target)

    def sampling_client(self, base_model: str | None = None) -> TinkerSamplingClient:
        if base_model is None:
            sdk = self._retry(lambda: self._tc().save_weights_and_get_sampling_client().result(), "snapshotting weights for sampling")
            return TinkerSamplingClient(sdk, self)
        if self._service is None:
            raise BackendError("The tinker backend has no session yet; start_session must come first.")
        service = self._service
        model_path: str | None = None
        if base_model.startswith("tinker://"):
            model_path = base_model
        elif Path(base_model).is_dir() and (Path(base_model) / WEIGHTS_POINTER_FILE).is_file():
            model_path = self._resolve_tinker_path(base_model, WEIGHTS_POINTER_FILE)
        if model_path is not None:
            sdk = self._retry(lambda: service.create_sampling_client(model_path=model_path).result(), f"opening a sampler on {model_path}")
        else:
            sdk = self._retry(lambda: service.create_sampling_client(base_model=base_model).result(), f"opening a sampler on {base_model!r}")
        return TinkerSamplingClient(sdk, self)

    def close(self) -> None:
        service, self._service, self._training = self._service, None, None
        if service is not None:
            _close_quietly(service, "success")


def _close_quietly(service: Any, status: str) -> None:
    try:
        service.close(status).result(timeout=10)
    except Exception as exc:  # noqa: BLE001 - closing is best effort
        log.debug("closing the Tinker session: %s", exc)
