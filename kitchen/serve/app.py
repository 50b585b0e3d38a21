"""``kitchen serve``: a Tinker-compatible HTTP server backed by a kitchen TrainingClient.

It implements the slice of the Tinker REST API (``/api/v1/...``) that the official
``tinker`` SDK uses for LoRA training and sampling, so unmodified SDK code - and the
kitchen's own ``TinkerTrainingClient`` - can train against a local model.

Wire format (as the SDK 0.38 speaks it): JSON everywhere except ``forward_backward``,
whose request body is protobuf (``tinker_public_pb2.ForwardBackwardRequest``, zstd
decoded when ``Content-Encoding: zstd``), and the results of forward/forward_backward
and sampling, which ``retrieve_future`` returns as protobuf
(``ForwardBackwardOutput`` / ``SampleResponse``). Auth is the ``X-API-Key`` header.

Built on the standard library's ``ThreadingHTTPServer``: the SDK's needs are plain
POST/GET with JSON or protobuf bodies plus long-polling, which a thread per connection
serves well, and it adds no dependency.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pydantic
from tinker import types as tt
from tinker.proto import tinker_public_pb2 as pb

from kitchen.ports.types import LOSS_FNS, AdamParams, CheckpointRef, LoraConfig, SamplingParams
from kitchen.serve import wire
from kitchen.serve.faults import FaultPlan
from kitchen.serve.state import (
    NOOP_TOKENIZER_ID,
    FutureRecord,
    ModelWorker,
    RequestError,
    SamplerRecord,
    ServerState,
)

log = logging.getLogger("kitchen.serve")

PROTO = "application/x-protobuf"
KEY_ENV_VARS = ("KITCHEN_SERVE_API_KEY", "TINKER_API_KEY")
LOCAL_MODELS = ("tiny-llama", "smollm2-135m-instruct")


def _parse(model_cls: type[pydantic.BaseModel], body: Any, extra_names: tuple[str, ...] = ()) -> Any:
    """Validate a JSON body against the SDK's own request type (unknown keys are dropped)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"expected a JSON object for {model_cls.__name__}")
    known = set(model_cls.model_fields) | set(extra_names)
    try:
        return model_cls.model_validate({k: v for k, v in body.items() if k in known})
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise RequestError(400, f"bad {model_cls.__name__}: {problems}") from None


class TinkerApp:
    """Endpoint logic, independent of the HTTP plumbing."""

    def __init__(self, state: ServerState, api_key: str, faults: FaultPlan, stall_s: float = 30.0) -> None:
        self.state = state
        self._api_key = api_key.encode()
        self.faults = faults
        self.stall_s = stall_s
        self._tok_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"TinkerApp(backend={self.state.backend!r})"

    def check_key(self, presented: str | None) -> None:
        if not presented:
            raise RequestError(401, "missing API key: send it in the X-API-Key header (the Tinker SDK sends $TINKER_API_KEY)")
        if not hmac.compare_digest(presented.encode(), self._api_key):
            raise RequestError(401, "invalid API key: set TINKER_API_KEY in the client to the key this kitchen server was started with")

    # ---- routing -----------------------------------------------------------------------
    def route(self, method: str, path: str) -> Callable[[Any], Any]:
        path = path.split("?", 1)[0].rstrip("/")
        if not path.startswith("/api/v1/"):
            raise RequestError(404, f"no such endpoint: {method} {path}")
        name = path[len("/api/v1/"):]
        gets = {
            "healthz": self.healthz,
            "get_server_capabilities": self.capabilities,
        }
        if method == "GET":
            if name in gets:
                return gets[name]
            if name.startswith("samplers/"):
                sampler_id = name[len("samplers/"):]
                return lambda _body: self.get_sampler(sampler_id)
            raise RequestError(404, f"no such endpoint: GET {path}")
        posts = {
            "client/config": self.client_config,
            "client/dynamic_config": lambda _b: {"refresh_interval_sec": 3600},
            "create_session": self.create_session,
            "session_heartbeat": lambda _b: {"type": "session_heartbeat"},
            "telemetry": lambda _b: {"status": "accepted"},
            "cancel_future": lambda _b: {},
            "create_model": self.create_model,
            "get_info": self.get_info,
            "forward_backward": self.forward_backward,
            "optim_step": self.optim_step,
            "save_weights": self.save_weights,
            "save_weights_for_sampler": self.save_weights_for_sampler,
            "load_weights": self.load_weights,
            "create_sampling_session": self.create_sampling_session,
            "asample": self.asample,
            "retrieve_future": self.retrieve_future,
        }
        if method == "POST":
            if name in posts:
                return posts[name]
            if name.startswith("sessions/") and name.endswith("/finish"):
                return lambda _b: {}
        raise RequestError(404, f"no such endpoint: {method} {path} (kitchen serve implements the LoRA training and sampling API only)")

    # ---- service -----------------------------------------------------------------------
    def healthz(self, _body: Any) -> dict:
        return {"status": "ok"}

    def capabilities(self, _body: Any) -> dict:
        names = list(LOCAL_MODELS) if self.state.backend == "local" else ["noop", *LOCAL_MODELS]
        return {"supported_models": [{"model_name": n, "trainable": True, "sampleable": True, "max_context_length": 1024} for n in names]}

    def client_config(self, _body: Any) -> dict:
        # Plain API-key auth, the httpx transport, uncompressed proto, per-request polling.
        return {
            "pjwt_auth_enabled": False,
            "use_pyqwest_transport": False,
            "proto_compress_fwdbwd": False,
            "sample_use_retrieve_futures": False,
            "sample_join_sampling_session": False,
            "custom_loss_server_side": False,
        }

    def create_session(self, body: Any) -> dict:
        req = _parse(tt.CreateSessionRequest, body)
        session_id = self.state.new_session(req.model_dump())
        return {"type": "create_session", "session_id": session_id}

    # ---- models ------------------------------------------------------------------------
    def _future(self, model_id: str | None) -> FutureRecord:
        return self.state.new_future(model_id)

    @staticmethod
    def _untyped(rec: FutureRecord) -> dict:
        return {"request_id": rec.request_id, "model_id": rec.model_id}

    def _extra(self, metadata: dict[str, Any] | None) -> dict[str, Any]:
        md = metadata or {}
        return {k[len("kitchen_"):]: v for k, v in md.items() if isinstance(k, str) and k.startswith("kitchen_")}

    def _finish_start(self, worker: ModelWorker) -> None:
        worker.start()
        worker.tokenizer_id = self._tokenizer_id(worker)

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
                tmp = target.with_name(target.name + f".tmp{uuid.uuid4().hex[:6]}")
                tok.save_pretrained(str(tmp))
                if target.exists():
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    os.replace(tmp, target)
        return str(target.resolve())

    def create_model(self, body: Any) -> dict:
        req = _parse(tt.CreateModelRequest, body)
        if req.session_id not in self.state.sessions:
            raise RequestError(404, f"unknown session_id {req.session_id!r}; create a session first")
        lc = req.lora_config
        if lc is None:
            raise RequestError(400, "create_model needs a lora_config (kitchen serve trains LoRA adapters)")
        if lc.rank <= 0:
            raise RequestError(400, f"LoRA rank must be positive, got {lc.rank}")
        if self.state.backend == "local" and req.base_model not in LOCAL_MODELS and "/" not in req.base_model and not Path(req.base_model).exists():
            raise RequestError(404, f"model {req.base_model!r} is not served here; try one of {', '.join(LOCAL_MODELS)} or a Hugging Face id")
        extra = self._extra(req.user_metadata)
        lora_kw: dict[str, Any] = dict(rank=lc.rank, train_mlp=lc.train_mlp, train_attn=lc.train_attn, train_unembed=lc.train_unembed)
        if extra.get("lora_alpha") not in (None, "", "None"):
            lora_kw["alpha"] = float(extra["lora_alpha"])
        if extra.get("lora_dropout") not in (None, ""):
            lora_kw["dropout"] = float(extra["lora_dropout"])
        model_id = f"{req.session_id}:train:{req.model_seq_id}"
        worker = ModelWorker(model_id, req.base_model, LoraConfig(**lora_kw), lc.seed or 0, self.state.backend,
                             self.state.ckpt_root(), extra)
        self.state.add_model(worker)
        rec = self._future(model_id)

        def work() -> None:
            self._finish_start(worker)
            rec.finish(latency_s=self.state.latency_s, json_body={"model_id": model_id, "type": "create_model"})

        worker.submit(rec, work)
        return self._untyped(rec)

    def get_info(self, body: Any) -> dict:
        req = _parse(tt.GetInfoRequest, body)
        worker = self.state.model(req.model_id)
        if worker.client is None:
            raise RequestError(409, f"model {req.model_id!r} is still being created")
        arch = "noop" if self.state.backend == "noop" else "llama"
        return {
            "type": "get_info",
            "model_id": worker.model_id,
            "model_data": {"arch": arch, "model_name": worker.base_model, "tokenizer_id": worker.tokenizer_id},
            "is_lora": True,
            "lora_rank": worker.lora.rank,
            "model_name": worker.base_model,
        }

    def forward_backward(self, body: Any) -> dict:
        if not isinstance(body, (bytes, bytearray)):
            raise RequestError(415, f"forward_backward expects a protobuf body (Content-Type: {PROTO})")
        msg = pb.ForwardBackwardRequest()
        try:
            msg.ParseFromString(bytes(body))
        except Exception as exc:
            raise RequestError(400, f"cannot decode ForwardBackwardRequest protobuf: {exc}") from None
        worker = self.state.model(msg.model_id)
        if msg.loss_fn not in LOSS_FNS:
            raise RequestError(400, f"unsupported loss_fn {msg.loss_fn!r}; kitchen serve supports {', '.join(LOSS_FNS)}")
        try:
            data = wire.datums_from_proto(msg)
        except wire.WireError as exc:
            raise RequestError(400, str(exc)) from None
        config = wire.loss_config_from_proto(msg)
        rec = self._future(worker.model_id)
        forward_only = msg.forward_only

        def work() -> None:
            if forward_only:
                result = worker.client.forward(data, msg.loss_fn).result()
            else:
                result = worker.client.forward_backward(data, msg.loss_fn, config or None).result()
            rec.finish(latency_s=self.state.latency_s, payload=wire.fb_result_to_proto(result, data))

        worker.submit(rec, work)
        return self._untyped(rec)

    def optim_step(self, body: Any) -> dict:
        req = _parse(tt.OptimStepRequest, body, ("adam_params", "optimizer_params"))
        worker = self.state.model(req.model_id)
        p = req.optim_params
        if not isinstance(p, tt.AdamParams):
            raise RequestError(400, "kitchen serve supports the AdamW optimizer only")
        params = AdamParams(learning_rate=p.learning_rate, beta1=p.beta1, beta2=p.beta2, eps=p.eps,
                            weight_decay=p.weight_decay, grad_clip_norm=p.grad_clip_norm)
        rec = self._future(worker.model_id)

        def work() -> None:
            result = worker.client.optim_step(params).result()
            worker.steps = result.step
            metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
            metrics["kitchen_step"] = float(result.step)
            rec.finish(latency_s=self.state.latency_s, json_body={"metrics": metrics, "type": "optim_step"})

        worker.submit(rec, work)
        return self._untyped(rec)

    # ---- checkpoints -------------------------------------------------------------------
    def save_weights(self, body: Any) -> dict:
        req = _parse(tt.SaveWeightsRequest, body)
        worker = self.state.model(req.model_id)
        rec = self._future(worker.model_id)
        name = req.path or f"step-{worker.steps:06d}"
        if "/" in name or name in (".", ".."):
            raise RequestError(400, f"checkpoint name {name!r} must not contain '/'")

        def work() -> None:
            ref = worker.client.save_state(name, worker.steps)
            meta = {
                "base_model": worker.base_model,
                "lora": asdict(worker.lora),
                "seed": worker.seed,
                "step": worker.steps,
                "extra": worker.extra,
                "backend": worker.backend_kind,
                "local_path": ref.path,
                "name": name,
            }
            meta_file = worker.ckpt_dir / "weights" / f"{name}.kitchen.json"
            meta_file.parent.mkdir(parents=True, exist_ok=True)
            meta_file.write_text(json.dumps(meta, indent=2, default=str))
            rec.finish(latency_s=self.state.latency_s, json_body={"path": self.state.state_path(worker.model_id, name), "type": "save_weights"})

        worker.submit(rec, work)
        return self._untyped(rec)

    def load_weights(self, body: Any) -> dict:
        req = _parse(tt.LoadWeightsRequest, body)
        local_path, meta = self.state.resolve_state(req.path)
        ref = CheckpointRef(name=meta.get("name", Path(local_path).name), path=meta.get("local_path", str(local_path)), step=int(meta.get("step", 0)))
        if req.session_id is not None:  # create-via-load: a new model whose first request is the load
            if req.session_id not in self.state.sessions:
                raise RequestError(404, f"unknown session_id {req.session_id!r}")
            if req.model_seq_id is None:
                raise RequestError(400, "load_weights with session_id needs model_seq_id")
            model_id = f"{req.session_id}:train:{req.model_seq_id}"
            lora = LoraConfig(**{k: v for k, v in meta["lora"].items() if k in LoraConfig.__dataclass_fields__})
            extra = {**meta.get("extra", {}), **self._extra(req.user_metadata)}
            worker = ModelWorker(model_id, req.base_model or meta["base_model"], lora, int(meta.get("seed", 0)),
                                 self.state.backend, self.state.ckpt_root(), extra)
            self.state.add_model(worker)
            creating = True
        else:
            if req.model_id is None:
                raise RequestError(400, "load_weights needs model_id, or session_id + model_seq_id")
            worker = self.state.model(req.model_id)
            creating = False
        rec = self._future(worker.model_id)

        def work() -> None:
            if creating:
                self._finish_start(worker)
            worker.client.load_state(ref, with_optimizer=bool(req.optimizer))
            worker.steps = ref.step
            rec.finish(latency_s=self.state.latency_s, json_body={"path": req.path, "model_id": worker.model_id, "type": "load_weights"})

        worker.submit(rec, work)
        return self._untyped(rec)

    # ---- sampling ----------------------------------------------------------------------
    def save_weights_for_sampler(self, body: Any) -> dict:
        req = _parse(tt.SaveWeightsForSamplerRequest, body)
        worker = self.state.model(req.model_id)
        if req.path is None and req.sampling_session_seq_id is None:
            raise RequestError(400, "save_weights_for_sampler needs a path or a sampling_session_seq_id")
        if req.path is not None and "/" in req.path:
            raise RequestError(400, f"sampler weights name {req.path!r} must not contain '/'")
        rec = self._future(worker.model_id)

        def work() -> None:
            sampler = worker.client.sampling_client()  # a frozen snapshot of the current weights
            if req.path is not None:
                path = self.state.sampler_path(worker.model_id, req.path)
                with self.state.lock:
                    self.state.sampler_snapshots[path] = SamplerRecord(path, worker.base_model, path, sampler)
                rec.finish(latency_s=self.state.latency_s, json_body={"path": path, "type": "save_weights_for_sampler"})
            else:
                sid = f"{worker.model_id.split(':')[0]}:sample:{uuid.uuid4().hex[:8]}"
                with self.state.lock:
                    self.state.samplers[sid] = SamplerRecord(sid, worker.base_model, None, sampler)
                rec.finish(latency_s=self.state.latency_s, json_body={"sampling_session_id": sid, "type": "save_weights_for_sampler"})

        worker.submit(rec, work)
        return self._untyped(rec)

    def create_sampling_session(self, body: Any) -> dict:
        req = _parse(tt.CreateSamplingSessionRequest, body)
        if req.session_id not in self.state.sessions:
            raise RequestError(404, f"unknown session_id {req.session_id!r}")
        sid = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        if req.model_path:
            with self.state.lock:
                snap = self.state.sampler_snapshots.get(req.model_path)
            if snap is None:
                raise RequestError(404, f"sampler weights {req.model_path!r} not found (save them with save_weights_for_sampler on this server)")
            record = SamplerRecord(sid, snap.base_model, req.model_path, snap.client)
        elif req.base_model:
            try:
                sampler = self.state.base_sampler(req.base_model)
            except Exception as exc:
                raise RequestError(404, f"cannot load base model {req.base_model!r}: {exc}") from None
            record = SamplerRecord(sid, req.base_model, None, sampler)
        else:
            raise RequestError(400, "create_sampling_session needs model_path or base_model")
        with self.state.lock:
            self.state.samplers[sid] = record
        return {"type": "create_sampling_session", "sampling_session_id": sid}

    def get_sampler(self, sampler_id: str) -> dict:
        with self.state.lock:
            rec = self.state.samplers.get(sampler_id)
        if rec is None:
            raise RequestError(404, f"unknown sampler {sampler_id!r}")
        return {"sampler_id": rec.sampler_id, "base_model": rec.base_model, "model_path": rec.model_path}

    def asample(self, body: Any) -> dict:
        req = _parse(tt.SampleRequest, body)
        with self.state.lock:
            record = self.state.samplers.get(req.sampling_session_id or "")
            if record is None and req.model_path:
                record = self.state.sampler_snapshots.get(req.model_path)
        if record is None and req.base_model:
            record = SamplerRecord("base", req.base_model, None, self.state.base_sampler(req.base_model))
        if record is None:
            raise RequestError(404, f"unknown sampling session {req.sampling_session_id!r}")
        try:
            tokens = req.prompt.to_ints()
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        if not tokens:
            raise RequestError(400, "prompt is empty")
        if req.num_samples < 1:
            raise RequestError(400, "num_samples must be at least 1")
        sp = req.sampling_params
        stop = sp.stop
        stop_t: tuple = () if stop is None else ((stop,) if isinstance(stop, str) else tuple(stop))
        params = SamplingParams(max_tokens=sp.max_tokens if sp.max_tokens is not None else 64, temperature=sp.temperature,
                                top_p=sp.top_p, top_k=sp.top_k, stop=stop_t, seed=sp.seed)
        rec = self._future(None)
        n = req.num_samples
        want_prompt_lp = bool(req.prompt_logprobs)

        def work() -> None:
            result = record.client.sample(tokens, n, params).result()
            plp = record.client.compute_logprobs(tokens).result() if want_prompt_lp else None
            rec.finish(latency_s=self.state.latency_s, payload=wire.sample_result_to_proto(result, plp))

        self.state.submit_sample(rec, work)
        out = self._untyped(rec)
        out["sample_sequence_ids"] = [f"{rec.request_id}-{i}" for i in range(n)]
        return out

    # ---- futures -----------------------------------------------------------------------
    def retrieve_future(self, body: Any) -> Any:
        req = _parse(tt.FutureRetrieveRequest, body)
        rec = self.state.wait_future(req.request_id)
        if rec is None:
            return {"type": "try_again", "request_id": req.request_id, "queue_state": "active"}
        if rec.error is not None:
            return {"error": rec.error, "category": rec.category}
        if rec.payload is not None:
            return (PROTO, rec.payload)
        return rec.json_body or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kitchen-serve"
    app: TinkerApp  # set on the subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)

    def setup(self) -> None:
        super().setup()
        # Small request/response pairs on keep-alive connections: without TCP_NODELAY,
        # Nagle + delayed ACKs add ~40 ms to many calls.
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            # headers and body in one write
            self._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]
            self._headers_buffer.append(body)  # type: ignore[attr-defined]
            self.flush_headers()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": message, "status": status}, headers)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if self.headers.get("Content-Encoding", "").lower() == "zstd":
            import zstandard

            raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 31)
        ctype = (self.headers.get("Content-Type") or "").lower()
        if PROTO in ctype:
            return raw
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc}") from None

    def _handle(self, method: str) -> None:
        app = self.app
        try:
            presented = self.headers.get("X-API-Key")
            if not presented:
                auth = self.headers.get("Authorization") or ""
                presented = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            try:
                body = self._read_body()
            except RequestError:
                app.check_key(presented)
                raise
            app.check_key(presented)
            handler = app.route(method, self.path)
            endpoint = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            rule = app.faults.take(endpoint) if app.faults else None
            if rule is not None:
                if rule.kind == "stall":
                    log.info("fault: stalling %s for %.1fs", endpoint, app.stall_s)
                    time.sleep(app.stall_s)
                    self.close_connection = True
                    return
                log.info("fault: answering %s with %s", endpoint, rule.status)
                self._error(int(rule.status or 503), f"injected fault for {endpoint} (KITCHEN_SERVE_FAULTS)", {"retry-after-ms": "50"})
                return
            result = handler(body)
            if isinstance(result, tuple):
                ctype, payload = result
                self._send(200, payload, ctype)
            else:
                self._send_json(200, result)
        except RequestError as exc:
            self._error(exc.status, exc.message)
        except Exception as exc:  # a bug: 500 with the message, traceback to the log
            log.error("internal error on %s %s: %s\n%s", method, self.path, exc, traceback.format_exc())
            self._error(500, f"internal server error: {type(exc).__name__}: {exc}")

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class KitchenServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    app: TinkerApp

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def resolve_api_key(api_key: str | None = None, env_var: str | None = None) -> tuple[str, bool]:
    """(key, generated): the given key, else the env (``env_var`` or KITCHEN_SERVE_API_KEY /
    TINKER_API_KEY), else a fresh random one."""
    if api_key:
        return api_key, False
    for name in ((env_var,) if env_var else KEY_ENV_VARS):
        value = os.environ.get(name or "")
        if value:
            return value, False
    return "tml-kitchen-" + secrets.token_urlsafe(24), True


def make_server(host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, backend: str = "local",
                latency_ms: float = 0.0, faults: str | None = None, state_dir: str | None = None,
                stall_s: float | None = None, api_key_env: str | None = None) -> KitchenServer:
    """Build (but do not start) the server; ``server.port`` is the bound port."""
    key, generated = resolve_api_key(api_key, api_key_env)
    if generated:
        print(
            "kitchen serve: no API key in KITCHEN_SERVE_API_KEY or TINKER_API_KEY; generated one for this run:\n"
            f"  export TINKER_API_KEY={key}",
            file=sys.stderr,
            flush=True,
        )
    elif not key.startswith(("tml-", "eyJ")):
        print("kitchen serve: warning: the Tinker SDK only sends keys that start with 'tml-'", file=sys.stderr, flush=True)
    plan = FaultPlan.parse(faults if faults is not None else os.environ.get("KITCHEN_SERVE_FAULTS"))
    if stall_s is None:
        stall_s = float(os.environ.get("KITCHEN_SERVE_STALL_S", "30"))
    state = ServerState(backend=backend, latency_ms=latency_ms, state_dir=state_dir)
    app = TinkerApp(state, key, plan, stall_s=stall_s)
    handler = type("KitchenHandler", (_Handler,), {"app": app})
    server = KitchenServer((host, port), handler)
    server.app = app
    return server


def run_server(host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, backend: str = "local",
               latency_ms: float = 0.0, faults: str | None = None, ready_file: str | None = None,
               state_dir: str | None = None, stall_s: float | None = None, api_key_env: str | None = None) -> None:
    """Serve the Tinker API until interrupted. ``port=0`` picks a free port; the actual
    address is printed and, with ``ready_file``, written there as JSON once listening."""
    server = make_server(host, port, api_key, backend, latency_ms, faults, state_dir, stall_s, api_key_env)
    url = f"http://{host}:{server.port}"
    print(f"kitchen serve: listening on {url} (backend={backend}, latency_ms={latency_ms:g}"
          + (f", faults={server.app.faults.rules}" if server.app.faults else "") + ")", flush=True)
    if ready_file:
        target = Path(ready_file)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps({"host": host, "port": server.port, "base_url": url, "pid": os.getpid()}))
        os.replace(tmp, target)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.app.state.shutdown()
