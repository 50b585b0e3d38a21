"""Weights and checkpoints: save/load training state, weights_info, training runs, the
checkpoint REST endpoints (list, delete, publish, TTL) and external exports."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tinker import types as tt

from kitchen.io.atomic import atomic_write_json
from kitchen.ports.tinker_ext import session_settings
from kitchen.ports.types import CheckpointRef, LoraConfig
from kitchen.serve.endpoints.context import ServeContext, iso, parse
from kitchen.serve.errors import RequestError, check_checkpoint_name
from kitchen.serve.external import check_ttl, parse_external_path
from kitchen.serve.routes import Call, Router
from kitchen.serve.workers import ModelWorker

_CKPT = r"training_runs/(?P<run_id>[^/]+)/checkpoints/(?P<kind>weights|sampler_weights|external_weights)/(?P<name>[^/]+)"


class CheckpointEndpoints:
    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx

    def register(self, r: Router) -> None:
        r.add("POST", "save_weights", self.save_weights)
        r.add("POST", "load_weights", self.load_weights)
        r.add("POST", "weights_info", self.weights_info)
        r.add("POST", "save_weights_external", self.save_weights_external)
        r.add("GET", "training_runs", self.list_training_runs)
        r.add("GET", "checkpoints", self.list_user_checkpoints)
        r.add_pattern(("GET",), r"training_runs/(?P<run_id>[^/]+)", self.get_training_run, "training_run")
        r.add_pattern(("GET",), r"training_runs/(?P<run_id>[^/]+)/checkpoints", self.list_checkpoints, "list_checkpoints")
        r.add_pattern(("DELETE",), _CKPT, self.delete_checkpoint, "delete_checkpoint")
        r.add_pattern(("POST", "DELETE"), _CKPT + "/publish", self.set_public, "publish_checkpoint")
        r.add_pattern(("PUT",), _CKPT + "/ttl", self.set_ttl, "checkpoint_ttl")
        r.add_pattern(("GET",), _CKPT + "/external_weights_urls", self.external_weights_urls, "external_weights_urls")

    # ---- training state ----------------------------------------------------------------
    def save_weights(self, call: Call) -> dict:
        state = self.ctx.state
        req = parse(tt.SaveWeightsRequest, call.body)
        worker = state.model(req.model_id)
        name = req.path or f"step-{worker.steps:06d}"
        check_checkpoint_name(name, "checkpoint")

        def work() -> dict:
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
            atomic_write_json(worker.ckpt_dir / "weights" / f"{name}.kitchen.json", meta)
            path = state.state_path(worker.model_id, name)
            state.touch_run(worker.model_id, last_checkpoint=path)
            return {"path": path, "type": "save_weights"}

        return self.ctx.on_model(worker, work)

    def load_weights(self, call: Call) -> dict:
        ctx, state = self.ctx, self.ctx.state
        req = parse(tt.LoadWeightsRequest, call.body)
        local_path, meta = state.resolve_state(req.path)
        ref = CheckpointRef(name=meta.get("name", Path(local_path).name), path=str(local_path), step=int(meta.get("step", 0)))
        if req.session_id is not None:  # create-via-load: a new model whose first request is the load
            state.live_session(req.session_id)
            if req.model_seq_id is None:
                raise RequestError(400, "load_weights with session_id needs model_seq_id")
            model_id = f"{req.session_id}:train:{req.model_seq_id}"
            lora = LoraConfig(**{k: v for k, v in meta["lora"].items() if k in LoraConfig.__dataclass_fields__})
            extra = {**meta.get("extra", {}), **session_settings(req.user_metadata)}
            if extra.get("precision") in (None, "", "None"):  # metadata written before precision was recorded
                extra["precision"] = state.precision
            base = ctx.served_name(req.base_model or meta["base_model"])
            worker = ModelWorker(model_id, base, lora, int(meta.get("seed", 0)), state.backend, state.ckpt_root(), extra)
            state.add_model(worker, user_metadata=req.user_metadata)
            creating = True
        else:
            if req.model_id is None:
                raise RequestError(400, "load_weights needs model_id, or session_id + model_seq_id")
            worker = state.model(req.model_id)
            creating = False

        def work() -> dict:
            if creating:
                ctx.start_worker(worker)
            worker.client.load_state(ref, with_optimizer=bool(req.optimizer))
            worker.steps = ref.step
            return {"path": req.path, "model_id": worker.model_id, "type": "load_weights"}

        return ctx.on_model(worker, work, cancellable=not creating)

    def weights_info(self, call: Call) -> dict:
        body = call.body
        if not isinstance(body, dict) or not isinstance(body.get("tinker_path"), str):
            raise RequestError(400, "weights_info needs {\"tinker_path\": \"tinker://RUN/weights/NAME\"} "
                                    "(or sampler_weights, external_weights)")
        path = body["tinker_path"]
        if "/external_weights/" in path:
            meta = self.ctx.external.require(*parse_external_path(path))
        elif "/sampler_weights/" in path:
            self.ctx.state.check_sampler_path(path)
            meta = self.ctx.state.snapshots.meta(path)
            if meta is None:
                raise RequestError(404, f"sampler weights {path!r} not found on this server")
        else:
            _, meta = self.ctx.state.resolve_state(path)
        lora = meta.get("lora", {})
        rank = int(lora.get("rank", 0))
        return {"base_model": meta.get("base_model"), "is_lora": rank > 0, "lora_rank": rank or None,
                "train_unembed": lora.get("train_unembed"), "train_mlp": lora.get("train_mlp"), "train_attn": lora.get("train_attn")}

    # ---- training runs & checkpoints (REST) --------------------------------------------
    @staticmethod
    def _page(query: Any) -> tuple[int, int]:
        try:
            limit = int(query.get("limit", 20))
            offset = int(query.get("offset", 0))
        except ValueError:
            raise RequestError(400, "limit and offset must be integers") from None
        if limit < 1 or limit > 1000 or offset < 0:
            raise RequestError(400, "limit must be 1-1000 and offset >= 0")
        return limit, offset

    def list_training_runs(self, call: Call) -> dict:
        limit, offset = self._page(call.query)
        runs = self.ctx.state.list_runs()
        page = [self._training_run(r) for r in runs[offset:offset + limit]]
        return {"training_runs": page, "cursor": {"offset": offset, "limit": limit, "total_count": len(runs)}}

    def get_training_run(self, call: Call) -> dict:
        run_id = call.params["run_id"]
        run = self.ctx.state.get_run(run_id)
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
                "last_request_time": iso(run.get("last_request_time", run.get("created", 0))),
                "last_checkpoint": last, "last_sampler_checkpoint": last_s,
                "user_metadata": {str(k): str(v) for k, v in md.items()}}

    def _checkpoints(self, run_id: str) -> list[dict]:
        out: list[dict] = []
        for meta in self.ctx.state.training_checkpoints(run_id):
            name = meta.get("name", "")
            out.append({"checkpoint_id": f"weights/{name}", "checkpoint_type": "training", "time": iso(meta.get("created", 0)),
                        "tinker_path": self.ctx.state.state_path(run_id, name), "size_bytes": meta.get("size_bytes"),
                        "public": bool(meta.get("public", False))})
        for meta in self.ctx.state.snapshots.list_for(run_id):
            key = meta["key"]
            out.append({"checkpoint_id": "sampler_weights/" + key.rsplit("/", 1)[-1], "checkpoint_type": "sampler",
                        "time": iso(meta.get("created", 0)), "tinker_path": key, "size_bytes": meta.get("bytes"),
                        "public": bool(meta.get("public", False))})
        for meta in self.ctx.external.list_for(run_id):
            out.append({"checkpoint_id": "external_weights/" + meta["name"], "checkpoint_type": "external",
                        "time": iso(meta.get("created", 0)), "tinker_path": meta["tinker_path"],
                        "size_bytes": meta.get("size_bytes"), "public": False,
                        "expires_at": iso(meta["expires_at"]) if meta.get("expires_at") is not None else None})
        return out

    def list_checkpoints(self, call: Call) -> dict:
        run_id = call.params["run_id"]
        if self.ctx.state.get_run(run_id) is None:
            raise RequestError(404, f"training run {run_id!r} not found on this server")
        return {"checkpoints": self._checkpoints(run_id)}

    def list_user_checkpoints(self, call: Call) -> dict:
        limit, offset = self._page(call.query)
        all_ckpts = [c for r in self.ctx.state.list_runs() for c in self._checkpoints(r["training_run_id"])]
        all_ckpts.sort(key=lambda c: c["time"], reverse=True)
        return {"checkpoints": all_ckpts[offset:offset + limit],
                "cursor": {"offset": offset, "limit": limit, "total_count": len(all_ckpts)}}

    def delete_checkpoint(self, call: Call) -> Any:
        run_id, kind, name = call.params["run_id"], call.params["kind"], call.params["name"]
        path = f"tinker://{run_id}/{kind}/{name}"
        if kind == "external_weights":
            parse_external_path(path)
            found = self.ctx.external.delete(run_id, name)
        elif kind == "sampler_weights":
            self.ctx.state.check_sampler_path(path)
            found = self.ctx.state.snapshots.delete(path)
        else:
            found = self.ctx.state.delete_state(path)
        if not found:
            raise RequestError(404, f"checkpoint {path!r} not found on this server")
        return {}

    def set_public(self, call: Call) -> Any:
        run_id, kind, name = call.params["run_id"], call.params["kind"], call.params["name"]
        public = call.method == "POST"
        path = f"tinker://{run_id}/{kind}/{name}"
        if kind == "external_weights":
            raise RequestError(400, f"{path}: external weights are downloaded through signed URLs "
                                    "(get_external_weights_urls); kitchen serve does not publish them")
        if kind == "sampler_weights":
            self.ctx.state.check_sampler_path(path)
            meta_file = self.ctx.state.snapshots.folder(path) / "meta.json"
        else:
            local, _ = self.ctx.state.resolve_state(path)
            meta_file = local.parent / f"{local.name}.kitchen.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            raise RequestError(404, f"checkpoint {path!r} not found on this server") from None
        meta["public"] = public
        atomic_write_json(meta_file, meta)
        return {}

    # ---- external weights (download) ---------------------------------------------------
    def save_weights_external(self, call: Call) -> dict:
        ctx = self.ctx
        req = parse(tt.SaveWeightsExternalRequest, call.body)
        worker = ctx.state.model(req.model_id)
        check_checkpoint_name(req.path, "external weights name")
        ttl_s = check_ttl(req.ttl_seconds)
        recipients = None
        if req.age_encryption_recipients is not None:
            from kitchen.serve.external import age_recipients

            recipients = age_recipients(req.age_encryption_recipients)

        def work() -> dict:
            meta = ctx.external.export(worker, req.path, ttl_s=ttl_s, recipients=recipients)
            ctx.state.touch_run(worker.model_id)
            return {"path": meta["tinker_path"], "size_bytes": meta["size_bytes"], "type": "save_weights_external"}

        return ctx.on_model(worker, work)

    def external_weights_urls(self, call: Call) -> dict:
        run_id, kind, name = call.params["run_id"], call.params["kind"], call.params["name"]
        if kind != "external_weights":
            raise RequestError(400, f"tinker://{run_id}/{kind}/{name}: only external weights have download URLs; export "
                                    "the session with save_weights_external first (the tinker CLI and the cookbook's "
                                    "weights.download do this for a training checkpoint)")
        parse_external_path(f"tinker://{run_id}/{kind}/{name}")
        return self.ctx.external.urls(run_id, name, call.base_url)

    def set_ttl(self, call: Call) -> Any:
        run_id, kind, name = call.params["run_id"], call.params["kind"], call.params["name"]
        body = call.body
        path = f"tinker://{run_id}/{kind}/{name}"
        if kind != "external_weights":
            raise RequestError(400, f"{path}: kitchen serve keeps training and sampler checkpoints until they are deleted; "
                                    "only external weights exports have a TTL")
        if not isinstance(body, dict) or "ttl_seconds" not in body:
            raise RequestError(400, "set ttl needs {\"ttl_seconds\": SECONDS or null}")
        parse_external_path(path)
        self.ctx.external.set_ttl(run_id, name, body["ttl_seconds"])
        return {}
