"""Health, capabilities, the SDK's client config, and futures (retrieve / cancel)."""

from __future__ import annotations

from typing import Any

from tinker import types as tt

from kitchen.serve.endpoints.context import PROTO, ServeContext, parse
from kitchen.serve.errors import RequestError
from kitchen.serve.routes import Call, Router

UNSUPPORTED = {
    "copy_weights": "copying weights between runs is not offered by kitchen serve",
    "create_custom_loss": "custom server-side losses are not offered by kitchen serve; use forward_backward_custom "
                          "(client-side) or a built-in loss_fn",
    "join_sampling_session": "join_sampling_session is not offered by kitchen serve (its client/config turns it off)",
    "retrieve_futures": "batched retrieve_futures is not offered by kitchen serve; use retrieve_future",
    "auth/token": "kitchen serve uses plain API keys (X-API-Key), not JWT exchange",
}


def register_refusals(router: Router) -> None:
    """The Tinker endpoints kitchen serve does not offer: a 400 that says what to use."""
    for name, message in UNSUPPORTED.items():
        router.refuse(name, message)
    router.refuse_pattern(r"training_runs/[^/]+/checkpoints/.+", lambda method, path: (
        f"{method} {path}: kitchen serve supports, per checkpoint, GET of external weights URLs, "
        "DELETE, publish/unpublish and PUT of an external export's ttl"))


class ServiceEndpoints:
    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx

    def register(self, r: Router) -> None:
        r.add("GET", "healthz", self.healthz)
        r.add("GET", "get_server_capabilities", self.capabilities)
        r.add("POST", "client/config", self.client_config)
        # sample_cancel_enabled: an SDK that abandons a sampling future sends cancel_future,
        # which takes the queued sample off the sampling thread's queue
        r.add("POST", "client/dynamic_config", lambda _c: {"refresh_interval_sec": 3600, "sample_cancel_enabled": True})
        r.add("POST", "telemetry", lambda _c: {"status": "accepted"})
        r.add("POST", "cancel_future", self.cancel_future)
        r.add("POST", "retrieve_future", self.retrieve_future)

    def healthz(self, _call: Call) -> dict:
        return {"status": "ok"}

    def capabilities(self, _call: Call) -> dict:
        return {"supported_models": [{"model_name": n, "trainable": True, "sampleable": True, "max_context_length": 2048}
                                     for n in self.ctx.models.values()]}

    def client_config(self, _call: Call) -> dict:
        # Plain API-key auth, the httpx transport, uncompressed proto, per-request polling.
        return {
            "pjwt_auth_enabled": False,
            "use_pyqwest_transport": False,
            "proto_compress_fwdbwd": False,
            "sample_use_retrieve_futures": False,
            "sample_join_sampling_session": False,
            "custom_loss_server_side": False,
        }

    def cancel_future(self, call: Call) -> dict:
        """Cancel a queued request: its worker skips it, and retrieving it answers a 'cancelled' error.

        Work already running finishes and its result is dropped (the backends' loops have
        no cancellation point); creating or loading a model cannot be cancelled.
        """
        body = call.body
        rid = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(rid, str) or not rid:
            raise RequestError(400, 'cancel_future needs {"request_id": "..."}')
        return {"cancelled": self.ctx.state.futures.cancel(rid)}

    def retrieve_future(self, call: Call) -> Any:
        req = parse(tt.FutureRetrieveRequest, call.body)
        rec = self.ctx.state.wait_future(req.request_id)
        if rec is None:
            return {"type": "try_again", "request_id": req.request_id, "queue_state": "active"}
        if rec.error is not None:
            return {"error": rec.error, "category": rec.category}
        if rec.payload is not None:
            return (PROTO, rec.payload)
        return rec.json_body or {}
