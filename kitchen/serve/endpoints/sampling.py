"""Sampling: sampler weights, sampling sessions, and ``asample`` (queued on the sampling thread)."""

from __future__ import annotations

import uuid

from tinker import types as tt

from kitchen.ports.types import SamplingParams
from kitchen.serve import wire
from kitchen.serve.endpoints.context import ServeContext, parse, untyped
from kitchen.serve.errors import RequestError, check_checkpoint_name
from kitchen.serve.routes import Call, Router
from kitchen.serve.state import SamplerRecord
from kitchen.serve.value_checks import check_sampling, check_token_ids


class SamplingEndpoints:
    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx

    def register(self, r: Router) -> None:
        r.add("POST", "save_weights_for_sampler", self.save_weights_for_sampler)
        r.add("POST", "create_sampling_session", self.create_sampling_session)
        r.add("POST", "asample", self.asample)
        r.add_pattern(("GET",), r"samplers/(?P<sampler_id>.*)", self.get_sampler, "get_sampler")

    def save_weights_for_sampler(self, call: Call) -> dict:
        state = self.ctx.state
        req = parse(tt.SaveWeightsForSamplerRequest, call.body)
        worker = state.model(req.model_id)
        if req.path is None and req.sampling_session_seq_id is None:
            raise RequestError(400, "save_weights_for_sampler needs a path or a sampling_session_seq_id")
        if req.path is not None:
            check_checkpoint_name(req.path, "sampler weights name")

        def work() -> dict:
            if req.path is not None:
                path = state.sampler_path(worker.model_id, req.path)
                state.snapshots.save(worker, path, ephemeral=False)
                state.touch_run(worker.model_id, last_sampler_checkpoint=path)
                return {"path": path, "type": "save_weights_for_sampler"}
            sid = f"{worker.model_id.split(':')[0]}:sample:{uuid.uuid4().hex[:8]}"
            state.snapshots.save(worker, sid, ephemeral=True)
            with state.lock:
                state.samplers[sid] = SamplerRecord(sid, worker.base_model, sid)
            return {"sampling_session_id": sid, "type": "save_weights_for_sampler"}

        return self.ctx.on_model(worker, work)

    def create_sampling_session(self, call: Call) -> dict:
        state = self.ctx.state
        req = parse(tt.CreateSamplingSessionRequest, call.body)
        if req.session_id not in state.sessions:
            raise RequestError(404, f"unknown session_id {req.session_id!r}")
        sid = f"{req.session_id}:sample:{req.sampling_session_seq_id}"
        if req.model_path:
            state.check_sampler_path(req.model_path)
            meta = state.snapshots.meta(req.model_path)
            if meta is None:
                raise RequestError(404, f"sampler weights {req.model_path!r} not found (save them with save_weights_for_sampler on this server)")
            record = SamplerRecord(sid, meta["base_model"], req.model_path)
        elif req.base_model:
            record = SamplerRecord(sid, self.ctx.served_name(req.base_model), None)
        else:
            raise RequestError(400, "create_sampling_session needs model_path or base_model")
        with state.lock:
            state.samplers[sid] = record
        return {"type": "create_sampling_session", "sampling_session_id": sid}

    def get_sampler(self, call: Call) -> dict:
        sampler_id = call.params["sampler_id"]
        with self.ctx.state.lock:
            rec = self.ctx.state.samplers.get(sampler_id)
        if rec is None:
            raise RequestError(404, f"unknown sampler {sampler_id!r}")
        return {"sampler_id": rec.sampler_id, "base_model": rec.base_model, "model_path": rec.model_path}

    def asample(self, call: Call) -> dict:
        state = self.ctx.state
        req = parse(tt.SampleRequest, call.body)
        with state.lock:
            record = state.samplers.get(req.sampling_session_id or "")
        if record is None and req.model_path:
            state.check_sampler_path(req.model_path)
            record = SamplerRecord("direct", "", req.model_path)
        if record is None and req.base_model:
            record = SamplerRecord("base", self.ctx.served_name(req.base_model), None)
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
        check_sampling(sp.temperature, sp.top_p, sp.top_k)
        base = record.base_model or (state.snapshots.meta(record.model_path) or {}).get("base_model", "")
        check_token_ids("prompt", tokens, self.ctx.vocab_size(base))
        params = SamplingParams(max_tokens=max_tokens, temperature=sp.temperature,
                                top_p=sp.top_p, top_k=sp.top_k, stop=stop_t, seed=sp.seed)
        n = req.num_samples
        want_prompt_lp = bool(req.prompt_logprobs)
        ctx = self.ctx

        def work() -> bytes:
            client = state.snapshots.get(record.model_path) if record.model_path else state.base_sampler(record.base_model)
            ctx.learn_vocab(base, client)  # later prompts of this base are range-checked at the wire
            result = client.sample(tokens, n, params).result()
            plp = client.compute_logprobs(tokens).result() if want_prompt_lp else None
            return wire.sample_result_to_proto(result, plp)

        cost = state.sample_budget.reserve(n, len(tokens), max_tokens)  # 400 / 429 before anything is queued
        rec = self.ctx.on_sampler(work, client=(req.sampling_session_id or "").split(":", 1)[0], cost=cost)
        out = untyped(rec)
        out["sample_sequence_ids"] = [f"{rec.request_id}-{i}" for i in range(n)]
        return out
