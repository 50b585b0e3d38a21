"""Sessions and their training models: create, describe, finish."""

from __future__ import annotations

import logging
from typing import Any

from tinker import types as tt

from kitchen.ports.tinker_ext import session_settings
from kitchen.ports.types import LoraConfig
from kitchen.serve.endpoints.context import ServeContext, parse
from kitchen.serve.errors import RequestError
from kitchen.serve.routes import Call, Router
from kitchen.serve.workers import ModelWorker

log = logging.getLogger("kitchen.serve")


class SessionEndpoints:
    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx

    def register(self, r: Router) -> None:
        r.add("POST", "create_session", self.create_session)
        r.add("POST", "session_heartbeat", lambda _c: {"type": "session_heartbeat"})
        r.add("POST", "create_model", self.create_model)
        r.add("POST", "get_info", self.get_info)
        r.add_pattern(("POST",), r"sessions/(?P<session_id>.+)/finish", self.finish_session, "finish_session")
        r.refuse_pattern(r"(?:sessions|audit|projects|whoami|checkpoint_storage).*", lambda method, path: (
            f"{method} {path}: session listing, projects and audit logs are not offered by kitchen serve"))

    def create_session(self, call: Call) -> dict:
        req = parse(tt.CreateSessionRequest, call.body)
        session_id = self.ctx.state.new_session(req.model_dump())
        return {"type": "create_session", "session_id": session_id}

    def finish_session(self, call: Call) -> dict:
        session_id, body = call.params["session_id"], call.body
        reason = body.get("reason") if isinstance(body, dict) else None
        kind = reason.get("type") if isinstance(reason, dict) else None
        unloaded = self.ctx.state.finish_session(session_id, str(kind or "finished"))
        if unloaded:
            log.info("session %s finished (%s): unloaded %s", session_id, kind or "finished", ", ".join(unloaded))
        return {}

    def create_model(self, call: Call) -> dict:
        ctx = self.ctx
        req = parse(tt.CreateModelRequest, call.body)
        ctx.state.live_session(req.session_id)
        lc = req.lora_config
        if lc is None:
            raise RequestError(400, "create_model needs a lora_config (kitchen serve trains LoRA adapters)")
        if lc.rank < 0 or (lc.rank == 0 and ctx.state.backend != "local"):
            raise RequestError(400, f"LoRA rank must be positive (0 = full fine-tuning, local backend only), got {lc.rank}")
        base_model = ctx.served_name(req.base_model)
        extra = session_settings(req.user_metadata)
        if extra.get("precision") in (None, "", "None"):
            extra["precision"] = ctx.state.precision
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
        worker = ModelWorker(model_id, base_model, LoraConfig(**lora_kw), lc.seed or 0, ctx.state.backend,
                             ctx.state.ckpt_root(), extra)
        ctx.state.add_model(worker, user_metadata=req.user_metadata)

        def work() -> dict:
            ctx.start_worker(worker)
            return {"model_id": model_id, "type": "create_model"}

        return ctx.on_model(worker, work, cancellable=False)

    def get_info(self, call: Call) -> dict:
        req = parse(tt.GetInfoRequest, call.body)
        worker = self.ctx.state.model(req.model_id)
        if worker.client is None:
            raise RequestError(409, f"model {req.model_id!r} is still being created")
        arch = "noop" if self.ctx.state.backend == "noop" else "llama"
        return {
            "type": "get_info",
            "model_id": worker.model_id,
            "model_data": {"arch": arch, "model_name": worker.base_model, "tokenizer_id": worker.tokenizer_id},
            "is_lora": worker.lora.rank > 0,
            "lora_rank": worker.lora.rank,
            "model_name": worker.base_model,
        }
