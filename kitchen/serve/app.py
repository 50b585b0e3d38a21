"""``kitchen serve``: a Tinker-compatible HTTP server backed by kitchen TrainingClients.

It implements the slice of the Tinker REST API (``/api/v1/...``) that the official
``tinker`` SDK uses for LoRA training, sampling, checkpoints and training-run
metadata, so unmodified SDK code - and the kitchen's own ``TinkerTrainingClient`` -
can train against a local model.

Wire format (as the SDK 0.38 speaks it): JSON everywhere except ``forward_backward``,
whose request body is protobuf (``tinker_public_pb2.ForwardBackwardRequest``, zstd
decoded when ``Content-Encoding: zstd``), and the results of forward/forward_backward
and sampling, which ``retrieve_future`` returns as protobuf
(``ForwardBackwardOutput`` / ``SampleResponse``). Auth is the ``X-API-Key`` header.

This module is the endpoint logic (:class:`TinkerApp`); the guarded HTTP layer
(uvicorn + Starlette) is :mod:`kitchen.serve.http`, server state
:mod:`kitchen.serve.state`, sampler weights :mod:`kitchen.serve.snapshots`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import re
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import pydantic
from tinker import types as tt
from tinker.proto import tinker_public_pb2 as pb

from kitchen.ports.types import LOSS_FNS, AdamParams, CheckpointRef, LoraConfig, SamplingParams
from kitchen.serve import wire
from kitchen.serve.external import ExternalWeights, check_ttl, parse_external_path
from kitchen.serve.faults import FaultPlan
from kitchen.ports.tinker_ext import NOOP_TOKENIZER_ID, STEP_METRIC, session_settings
from kitchen.serve.state import (
    FutureRecord,
    ModelWorker,
    RequestError,
    SamplerRecord,
    ServerState,
    check_checkpoint_name,
)

log = logging.getLogger("kitchen.serve")

PROTO = "application/x-protobuf"
KEY_ENV_VARS = ("KITCHEN_SERVE_API_KEY", "TINKER_API_KEY")
# Served by default (``--model`` replaces the list). Advertised by Hugging Face id where
# there is one, so ``AutoTokenizer.from_pretrained(model_name)`` works in clients;
# kitchen's aliases (smollm2-135m-instruct, tiny) are still accepted.
DEFAULT_MODELS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "tiny-llama")
NOOP_MODEL = "noop"


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
    """Endpoint logic, independent of the HTTP plumbing (see :mod:`kitchen.serve.http`)."""

    def __init__(self, state: ServerState, api_key: str, faults: FaultPlan, stall_s: float = 30.0,
                 models: list[str] | None = None) -> None:
        self.state = state
        self._api_key = api_key.encode()
        self.faults = faults
        self.stall_s = stall_s
        self._tok_lock = threading.Lock()
        self.models = served_models(state.backend, models)
        self.external = ExternalWeights(state.root, self._api_key)

    def __repr__(self) -> str:  # never show the key
        return f"TinkerApp(backend={self.state.backend!r})"

    def check_key(self, presented: str | None) -> None:
        if not presented:
            raise RequestError(401, "missing API key: send it in the X-API-Key header (the Tinker SDK sends $TINKER_API_KEY)")
        if not hmac.compare_digest(presented.encode(), self._api_key):
            raise RequestError(401, "invalid API key: set TINKER_API_KEY in the client to the key this kitchen server was started with")

    # ---- routing -----------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, str] | None = None,
              base_url: str = "") -> tuple[Callable[[Any], Any], str]:
        """(handler, endpoint name for metrics/faults/logs), or a RequestError (404/405 with a message).

        ``base_url`` is the server's address as the client reached it (the download URLs
        of external weights are built on it).
        """
        query = query or {}
        path = path.split("?", 1)[0].rstrip("/")
        if not path.startswith("/api/v1/"):
            raise RequestError(404, f"no such endpoint: {method} {path} (the Tinker API lives under /api/v1/)")
        name = path[len("/api/v1/"):]
        gets = {
            "healthz": self.healthz,
            "get_server_capabilities": self.capabilities,
            "training_runs": lambda _b: self.list_training_runs(query),
            "checkpoints": lambda _b: self.list_user_checkpoints(query),
        }
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
            "weights_info": self.weights_info,
            "save_weights_external": self.save_weights_external,
        }
        unsupported = {
            "copy_weights": "copying weights between runs is not offered by kitchen serve",
            "create_custom_loss": "custom server-side losses are not offered by kitchen serve; use forward_backward_custom "
                                  "(client-side) or a built-in loss_fn",
            "join_sampling_session": "join_sampling_session is not offered by kitchen serve (its client/config turns it off)",
            "retrieve_futures": "batched retrieve_futures is not offered by kitchen serve; use retrieve_future",
            "auth/token": "kitchen serve uses plain API keys (X-API-Key), not JWT exchange",
        }
        if name in unsupported:
            raise RequestError(400, unsupported[name])
        if method == "GET" and name in gets:
            return gets[name], name.replace("/", "_")
        if method == "POST" and name in posts:
            return posts[name], name.replace("/", "_")
        m = re.fullmatch(r"training_runs/([^/]+)(/checkpoints(?:/(weights|sampler_weights|external_weights)/([^/]+)"
                         r"(/publish|/ttl|/external_weights_urls)?)?)?", name)
        if m:
            run_id, ckpts, kind, ckpt, action = m.groups()
            if not ckpts and method == "GET":
                return (lambda _b: self.get_training_run(run_id)), "training_run"
            if ckpts and not kind and method == "GET":
                return (lambda _b: self.list_checkpoints(run_id)), "list_checkpoints"
            if kind and not action and method == "DELETE":
                return (lambda _b: self.delete_checkpoint(run_id, kind, ckpt)), "delete_checkpoint"
            if kind and action == "/publish" and method in ("POST", "DELETE"):
                return (lambda _b: self.set_public(run_id, kind, ckpt, method == "POST")), "publish_checkpoint"
            if kind and action == "/ttl" and method == "PUT":
                return (lambda b: self.set_ttl(run_id, kind, ckpt, b)), "checkpoint_ttl"
            if kind and action == "/external_weights_urls" and method == "GET":
                return (lambda _b: self.external_weights_urls(run_id, kind, ckpt, base_url)), "external_weights_urls"
        if re.fullmatch(r"training_runs/[^/]+/checkpoints/.+", name):
            raise RequestError(400, f"{method} {path}: kitchen serve supports, per checkpoint, GET of external weights URLs, "
                                    "DELETE, publish/unpublish and PUT of an external export's ttl")
        if method == "GET" and name.startswith("samplers/"):
            sampler_id = name[len("samplers/"):]
            return (lambda _body: self.get_sampler(sampler_id)), "get_sampler"
        if method == "POST" and name.startswith("sessions/") and name.endswith("/finish"):
            session_id = name[len("sessions/"):-len("/finish")]
            return (lambda b: self.finish_session(session_id, b)), "finish_session"
        if name.startswith(("sessions", "audit", "projects", "whoami", "checkpoint_storage")):
            raise RequestError(400, f"{method} {path}: session listing, projects and audit logs are not offered by kitchen serve")
        raise RequestError(404, f"no such endpoint: {method} {path} (kitchen serve implements the Tinker training, "
                                "sampling and checkpoint API)")

    # ---- service -----------------------------------------------------------------------
    def healthz(self, _body: Any) -> dict:
        return {"status": "ok"}

    def capabilities(self, _body: Any) -> dict:
        return {"supported_models": [{"model_name": n, "trainable": True, "sampleable": True, "max_context_length": 2048}
                                     for n in self.models.values()]}

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

    def finish_session(self, session_id: str, body: Any) -> dict:
        reason = body.get("reason") if isinstance(body, dict) else None
        kind = reason.get("type") if isinstance(reason, dict) else None
        unloaded = self.state.finish_session(session_id, str(kind or "finished"))
        if unloaded:
            log.info("session %s finished (%s): unloaded %s", session_id, kind or "finished", ", ".join(unloaded))
        return {}

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

    def served_name(self, requested: str) -> str:
        """The advertised name for a requested model (an alias, hub id or local path), or 404."""
        from kitchen.adapters.local.models import canonical_name

        found = self.models.get(canonical_name(requested))
        if found is None and self.state.backend == "local" and requested and Path(requested).expanduser().exists():
            return requested  # a model directory or run dir on this machine (e.g. a distillation teacher)
        if found is None:
            raise RequestError(404, f"model {requested!r} is not served here; this server serves: {', '.join(self.models.values())} "
                                    "(start it with --model NAME to serve another)")
        return found

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
        self.state.live_session(req.session_id)
        lc = req.lora_config
        if lc is None:
            raise RequestError(400, "create_model needs a lora_config (kitchen serve trains LoRA adapters)")
        if lc.rank < 0 or (lc.rank == 0 and self.state.backend != "local"):
            raise RequestError(400, f"LoRA rank must be positive (0 = full fine-tuning, local backend only), got {lc.rank}")
        base_model = self.served_name(req.base_model)
        extra = session_settings(req.user_metadata)
        lora_kw: dict[str, Any] = dict(rank=lc.rank, train_mlp=lc.train_mlp, train_attn=lc.train_attn, train_unembed=lc.train_unembed)
        try:
            if extra.get("lora_alpha") not in (None, "", "None"):
                lora_kw["alpha"] = float(extra["lora_alpha"])
            if extra.get("lora_dropout") not in (None, "", "None"):
                lora_kw["dropout"] = float(extra["lora_dropout"])
            if extra.get("max_length") not in (None, "", "None"):
                int(extra["max_length"])
        except (TypeError, ValueError) as exc:
            raise RequestError(400, f"bad kitchen_* user_metadata: {exc}") from None
        model_id = f"{req.session_id}:train:{req.model_seq_id}"
        worker = ModelWorker(model_id, base_model, LoraConfig(**lora_kw), lc.seed or 0, self.state.backend,
                             self.state.ckpt_root(), extra)
        self.state.add_model(worker, user_metadata=req.user_metadata)
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
            "is_lora": worker.lora.rank > 0,
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
            metrics[STEP_METRIC] = float(result.step)
            rec.finish(latency_s=self.state.latency_s, json_body={"metrics": metrics, "type": "optim_step"})

        worker.submit(rec, work)
        return self._untyped(rec)

    # ---- checkpoints -------------------------------------------------------------------
    def save_weights(self, body: Any) -> dict:
        req = _parse(tt.SaveWeightsRequest, body)
        worker = self.state.model(req.model_id)
        name = req.path or f"step-{worker.steps:06d}"
        check_checkpoint_name(name, "checkpoint")
        rec = self._future(worker.model_id)

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
                "created": time.time(),
            }
            meta_file = worker.ckpt_dir / "weights" / f"{name}.kitchen.json"
            meta_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = meta_file.with_name(meta_file.name + ".tmp")
            tmp.write_text(json.dumps(meta, indent=2, default=str))
            os.replace(tmp, meta_file)
            path = self.state.state_path(worker.model_id, name)
            self.state.touch_run(worker.model_id, last_checkpoint=path)
            rec.finish(latency_s=self.state.latency_s, json_body={"path": path, "type": "save_weights"})

        worker.submit(rec, work)
        return self._untyped(rec)

    def load_weights(self, body: Any) -> dict:
        req = _parse(tt.LoadWeightsRequest, body)
        local_path, meta = self.state.resolve_state(req.path)
        ref = CheckpointRef(name=meta.get("name", Path(local_path).name), path=str(local_path), step=int(meta.get("step", 0)))
        if req.session_id is not None:  # create-via-load: a new model whose first request is the load
            self.state.live_session(req.session_id)
            if req.model_seq_id is None:
                raise RequestError(400, "load_weights with session_id needs model_seq_id")
            model_id = f"{req.session_id}:train:{req.model_seq_id}"
            lora = LoraConfig(**{k: v for k, v in meta["lora"].items() if k in LoraConfig.__dataclass_fields__})
            extra = {**meta.get("extra", {}), **session_settings(req.user_metadata)}
            base = self.served_name(req.base_model or meta["base_model"])
            worker = ModelWorker(model_id, base, lora, int(meta.get("seed", 0)),
                                 self.state.backend, self.state.ckpt_root(), extra)
            self.state.add_model(worker, user_metadata=req.user_metadata)
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

    def weights_info(self, body: Any) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("tinker_path"), str):
            raise RequestError(400, "weights_info needs {\"tinker_path\": \"tinker://RUN/weights/NAME\"} "
                                    "(or sampler_weights, external_weights)")
        path = body["tinker_path"]
        if "/external_weights/" in path:
            meta = self.external.require(*parse_external_path(path))
        elif "/sampler_weights/" in path:
            self.state.check_sampler_path(path)
            meta = self.state.snapshots.meta(path)
            if meta is None:
                raise RequestError(404, f"sampler weights {path!r} not found on this server")
        else:
            _, meta = self.state.resolve_state(path)
        lora = meta.get("lora", {})
        rank = int(lora.get("rank", 0))
        return {"base_model": meta.get("base_model"), "is_lora": rank > 0, "lora_rank": rank or None,
                "train_unembed": lora.get("train_unembed"), "train_mlp": lora.get("train_mlp"), "train_attn": lora.get("train_attn")}

    # ---- training runs & checkpoints (REST) --------------------------------------------
    def _page(self, query: dict[str, str]) -> tuple[int, int]:
        try:
            limit = int(query.get("limit", 20))
            offset = int(query.get("offset", 0))
        except ValueError:
            raise RequestError(400, "limit and offset must be integers") from None
        if limit < 1 or limit > 1000 or offset < 0:
            raise RequestError(400, "limit must be 1-1000 and offset >= 0")
        return limit, offset

    def list_training_runs(self, query: dict[str, str]) -> dict:
        limit, offset = self._page(query)
        runs = self.state.list_runs()
        page = [self._training_run(r) for r in runs[offset:offset + limit]]
        return {"training_runs": page, "cursor": {"offset": offset, "limit": limit, "total_count": len(runs)}}

    def get_training_run(self, run_id: str) -> dict:
        run = self.state.get_run(run_id)
        if run is None:
            raise RequestError(404, f"training run {run_id!r} not found on this server")
        return self._training_run(run)

    def _training_run(self, run: dict[str, Any]) -> dict:
        rank = int(run.get("lora", {}).get("rank", 0))
        ckpts = self._checkpoints(run["training_run_id"])
        last = max((c for c in ckpts if c["checkpoint_type"] == "training"), key=lambda c: c["time"], default=None)
        last_s = max((c for c in ckpts if c["checkpoint_type"] == "sampler"), key=lambda c: c["time"], default=None)
        md = run.get("user_metadata") or {}
        return {"training_run_id": run["training_run_id"], "base_model": run["base_model"], "model_owner": "kitchen",
                "is_lora": rank > 0, "lora_rank": rank or None, "corrupted": False,
                "last_request_time": _iso(run.get("last_request_time", run.get("created", 0))),
                "last_checkpoint": last, "last_sampler_checkpoint": last_s,
                "user_metadata": {str(k): str(v) for k, v in md.items()}}

    def _checkpoints(self, run_id: str) -> list[dict]:
        out: list[dict] = []
        for meta in self.state.training_checkpoints(run_id):
            name = meta.get("name", "")
            out.append({"checkpoint_id": f"weights/{name}", "checkpoint_type": "training", "time": _iso(meta.get("created", 0)),
                        "tinker_path": self.state.state_path(run_id, name), "size_bytes": meta.get("size_bytes"),
                        "public": bool(meta.get("public", False))})
        for meta in self.state.snapshots.list_for(run_id):
            key = meta["key"]
            out.append({"checkpoint_id": "sampler_weights/" + key.rsplit("/", 1)[-1], "checkpoint_type": "sampler",
                        "time": _iso(meta.get("created", 0)), "tinker_path": key, "size_bytes": meta.get("bytes"),
                        "public": bool(meta.get("public", False))})
        for meta in self.external.list_for(run_id):
            out.append({"checkpoint_id": "external_weights/" + meta["name"], "checkpoint_type": "external",
                        "time": _iso(meta.get("created", 0)), "tinker_path": meta["tinker_path"],
                        "size_bytes": meta.get("size_bytes"), "public": False,
                        "expires_at": _iso(meta["expires_at"]) if meta.get("expires_at") is not None else None})
        return out

    def list_checkpoints(self, run_id: str) -> dict:
        if self.state.get_run(run_id) is None:
            raise RequestError(404, f"training run {run_id!r} not found on this server")
        return {"checkpoints": self._checkpoints(run_id)}

    def list_user_checkpoints(self, query: dict[str, str]) -> dict:
        limit, offset = self._page(query)
        all_ckpts = [c for r in self.state.list_runs() for c in self._checkpoints(r["training_run_id"])]
        all_ckpts.sort(key=lambda c: c["time"], reverse=True)
        return {"checkpoints": all_ckpts[offset:offset + limit],
                "cursor": {"offset": offset, "limit": limit, "total_count": len(all_ckpts)}}

    def delete_checkpoint(self, run_id: str, kind: str, name: str) -> Any:
        path = f"tinker://{run_id}/{kind}/{name}"
        if kind == "external_weights":
            parse_external_path(path)
            found = self.external.delete(run_id, name)
        elif kind == "sampler_weights":
            self.state.check_sampler_path(path)
            found = self.state.snapshots.delete(path)
        else:
            found = self.state.delete_state(path)
        if not found:
            raise RequestError(404, f"checkpoint {path!r} not found on this server")
        return {}

    def set_public(self, run_id: str, kind: str, name: str, public: bool) -> Any:
        path = f"tinker://{run_id}/{kind}/{name}"
        if kind == "external_weights":
            raise RequestError(400, f"{path}: external weights are downloaded through signed URLs "
                                    "(get_external_weights_urls); kitchen serve does not publish them")
        if kind == "sampler_weights":
            self.state.check_sampler_path(path)
            meta_file = self.state.snapshots.folder(path) / "meta.json"
        else:
            local, _ = self.state.resolve_state(path)
            meta_file = local.parent / f"{local.name}.kitchen.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            raise RequestError(404, f"checkpoint {path!r} not found on this server") from None
        meta["public"] = public
        meta_file.write_text(json.dumps(meta, indent=2, default=str))
        return {}

    # ---- external weights (download) ---------------------------------------------------
    def save_weights_external(self, body: Any) -> dict:
        req = _parse(tt.SaveWeightsExternalRequest, body)
        worker = self.state.model(req.model_id)
        check_checkpoint_name(req.path, "external weights name")
        ttl_s = check_ttl(req.ttl_seconds)
        recipients = None
        if req.age_encryption_recipients is not None:
            from kitchen.serve.external import age_recipients

            recipients = age_recipients(req.age_encryption_recipients)
        rec = self._future(worker.model_id)

        def work() -> None:
            meta = self.external.export(worker, req.path, ttl_s=ttl_s, recipients=recipients)
            self.state.touch_run(worker.model_id)
            rec.finish(latency_s=self.state.latency_s, json_body={"path": meta["tinker_path"], "size_bytes": meta["size_bytes"],
                                                                  "type": "save_weights_external"})

        worker.submit(rec, work)
        return self._untyped(rec)

    def external_weights_urls(self, run_id: str, kind: str, name: str, base_url: str) -> dict:
        if kind != "external_weights":
            raise RequestError(400, f"tinker://{run_id}/{kind}/{name}: only external weights have download URLs; export "
                                    "the session with save_weights_external first (the tinker CLI and the cookbook's "
                                    "weights.download do this for a training checkpoint)")
        parse_external_path(f"tinker://{run_id}/{kind}/{name}")
        return self.external.urls(run_id, name, base_url)

    def set_ttl(self, run_id: str, kind: str, name: str, body: Any) -> Any:
        path = f"tinker://{run_id}/{kind}/{name}"
        if kind != "external_weights":
            raise RequestError(400, f"{path}: kitchen serve keeps training and sampler checkpoints until they are deleted; "
                                    "only external weights exports have a TTL")
        if not isinstance(body, dict) or "ttl_seconds" not in body:
            raise RequestError(400, "set ttl needs {\"ttl_seconds\": SECONDS or null}")
        parse_external_path(path)
        self.external.set_ttl(run_id, name, body["ttl_seconds"])
        return {}

    # ---- sampling ----------------------------------------------------------------------
    def save_weights_for_sampler(self, body: Any) -> dict:
        req = _parse(tt.SaveWeightsForSamplerRequest, body)
        worker = self.state.model(req.model_id)
        if req.path is None and req.sampling_session_seq_id is None:
            raise RequestError(400, "save_weights_for_sampler needs a path or a sampling_session_seq_id")
        if req.path is not None:
            check_checkpoint_name(req.path, "sampler weights name")
        rec = self._future(worker.model_id)

        def work() -> None:
            if req.path is not None:
                path = self.state.sampler_path(worker.model_id, req.path)
                self.state.snapshots.save(worker, path, ephemeral=False)
                self.state.touch_run(worker.model_id, last_sampler_checkpoint=path)
                rec.finish(latency_s=self.state.latency_s, json_body={"path": path, "type": "save_weights_for_sampler"})
            else:
                sid = f"{worker.model_id.split(':')[0]}:sample:{uuid.uuid4().hex[:8]}"
                self.state.snapshots.save(worker, sid, ephemeral=True)
                with self.state.lock:
                    self.state.samplers[sid] = SamplerRecord(sid, worker.base_model, sid)
                rec.finish(latency_s=self.state.latency_s, json_body={"sampling_session_id": sid, "type": "save_weights_for_sampler"})

        worker.submit(rec, work)
        return self._untyped(rec)

    def create_sampling_session(self, body: Any) -> dict:
        req = _parse(tt.CreateSamplingSessionRequest, body)
        if req.session_id not in self.state.sessions:
            raise RequestError(404, f"unknown session_id {req.session_id!r}")
        sid = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        if req.model_path:
            self.state.check_sampler_path(req.model_path)
            meta = self.state.snapshots.meta(req.model_path)
            if meta is None:
                raise RequestError(404, f"sampler weights {req.model_path!r} not found (save them with save_weights_for_sampler on this server)")
            record = SamplerRecord(sid, meta["base_model"], req.model_path)
        elif req.base_model:
            record = SamplerRecord(sid, self.served_name(req.base_model), None)
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
            self.state.check_sampler_path(req.model_path)
            record = SamplerRecord("direct", "", req.model_path)
        if record is None and req.base_model:
            record = SamplerRecord("base", self.served_name(req.base_model), None)
        if record is None:
            raise RequestError(404, f"unknown sampling session {req.sampling_session_id!r}")
        try:
            tokens = req.prompt.to_ints()
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        if not tokens:
            raise RequestError(400, "prompt is empty")
        if req.num_samples < 1 or req.num_samples > 1024:
            raise RequestError(400, f"num_samples must be 1-1024, got {req.num_samples}")
        sp = req.sampling_params
        stop = sp.stop
        stop_t: tuple = () if stop is None else ((stop,) if isinstance(stop, str) else tuple(stop))
        max_tokens = sp.max_tokens if sp.max_tokens is not None else 64
        if max_tokens < 0 or max_tokens > 65536:
            raise RequestError(400, f"max_tokens must be 0-65536, got {max_tokens}")
        params = SamplingParams(max_tokens=max_tokens, temperature=sp.temperature,
                                top_p=sp.top_p, top_k=sp.top_k, stop=stop_t, seed=sp.seed)
        rec = self._future(None)
        n = req.num_samples
        want_prompt_lp = bool(req.prompt_logprobs)
        state = self.state

        def work() -> None:
            client = state.snapshots.get(record.model_path) if record.model_path else state.base_sampler(record.base_model)
            result = client.sample(tokens, n, params).result()
            plp = client.compute_logprobs(tokens).result() if want_prompt_lp else None
            rec.finish(latency_s=state.latency_s, payload=wire.sample_result_to_proto(result, plp))

        self.state.submit_sample(rec, work, client=(req.sampling_session_id or "").split(":", 1)[0])
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


def _iso(ts: float) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(float(ts or 0), tz=_dt.timezone.utc).isoformat()


def served_models(backend: str, models: list[str] | None) -> dict[str, str]:
    """canonical name -> advertised name, for the models this server accepts.

    A kitchen alias of a model with a Hugging Face id is advertised by that id; anything
    else (a local directory, a cached hub id, ``tiny-llama``) by the name given.
    """
    from kitchen.adapters.local.models import DEFAULT_MODEL, SMOLLM2_HF_ID, canonical_name

    names = list(models) if models else list(DEFAULT_MODELS)
    if backend == "noop" and not models:
        names = [NOOP_MODEL, *names]
    out: dict[str, str] = {}
    for n in names:
        canon = canonical_name(n)
        out[canon] = SMOLLM2_HF_ID if canon == DEFAULT_MODEL else n
    return out


def check_models(backend: str, models: list[str]) -> None:
    """Every ``--model`` must be something the local backend can load (no download)."""
    from kitchen.adapters.local.models import resolve_model
    from kitchen.errors import KitchenError
    from kitchen.serve.options import ServeOptionError

    for m in models:
        if backend == "noop":
            continue
        try:
            resolve_model(m)
        except KitchenError as exc:
            raise ServeOptionError(f"--model {m!r}: {exc.render()}") from None


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


def build_app(opts: Any, api_key: str | None = None) -> TinkerApp:
    """The endpoint logic for validated :class:`~kitchen.serve.options.ServeOptions`."""
    key, generated = resolve_api_key(api_key, opts.api_key_env)
    if generated:
        print(
            "kitchen serve: no API key in KITCHEN_SERVE_API_KEY or TINKER_API_KEY; generated one for this run:\n"
            f"  export TINKER_API_KEY={key}",
            file=sys.stderr,
            flush=True,
        )
    elif not key.startswith(("tml-", "eyJ")):
        print("kitchen serve: warning: the Tinker SDK only sends keys that start with 'tml-'", file=sys.stderr, flush=True)
    plan = FaultPlan.parse(opts.faults if opts.faults is not None else os.environ.get("KITCHEN_SERVE_FAULTS"))
    stall_s = opts.stall_s if opts.stall_s is not None else float(os.environ.get("KITCHEN_SERVE_STALL_S", "30"))
    state = ServerState(backend=opts.backend, latency_ms=opts.latency_ms, state_dir=opts.state_dir,
                        max_loaded_samplers=opts.max_loaded_samplers)
    return TinkerApp(state, key, plan, stall_s=stall_s, models=opts.models)


def run_server(opts: Any) -> int:
    """Serve until SIGTERM/SIGINT, then finish queued work, persist, and return 0.

    ``opts`` is a validated :class:`~kitchen.serve.options.ServeOptions`; ``port=0`` picks
    a free port; the address is printed and, with ``ready_file``, written as JSON there.
    """
    import uvicorn

    from kitchen.serve.connection_guard import head_deadline_protocol
    from kitchen.serve.http import Limits, build_asgi
    from kitchen.serve.metrics import ServeMetrics, state_gauges
    from kitchen.serve.options import configure_logging

    configure_logging(opts.log_level)
    check_models(opts.backend, opts.models)
    sock = opts.bind()
    app = build_app(opts)
    limits = Limits(max_body_bytes=int(opts.max_body_mb * 1024 * 1024), max_decompression_ratio=opts.max_decompression_ratio,
                    read_timeout_s=opts.read_timeout_s, workers=opts.workers)
    asgi = build_asgi(app, limits, ServeMetrics(state_gauges(app.state)))
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    config = uvicorn.Config(asgi, log_config=None, access_log=False, timeout_keep_alive=int(max(1, opts.idle_timeout_s)),
                            limit_concurrency=max(64, 16 * opts.workers), timeout_graceful_shutdown=30,
                            lifespan="off", server_header=False, http=head_deadline_protocol(opts.header_timeout_s))
    server = uvicorn.Server(config)
    # uvicorn re-raises a captured SIGTERM/SIGINT after its graceful shutdown; with these
    # handlers that re-raise is harmless, so we get to drain and exit 0.
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopped.append(signum))
    print(f"kitchen serve: listening on {url} (backend={opts.backend}, models={', '.join(app.models.values())}, "
          f"state_dir={app.state.root}, latency_ms={opts.latency_ms:g}"
          + (f", faults={app.faults.rules}" if app.faults else "") + ")", flush=True)
    if opts.ready_file:
        target = Path(opts.ready_file)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps({"host": host, "port": port, "base_url": url, "pid": os.getpid()}))
        os.replace(tmp, target)
    try:
        server.run(sockets=[sock])
    finally:
        print("kitchen serve: stopping; finishing queued work", file=sys.stderr, flush=True)
        app.state.shutdown(drain_s=60.0)
        print("kitchen serve: stopped", file=sys.stderr, flush=True)
    return 0
