"""Training steps: forward / forward_backward (protobuf bodies) and optim_step."""

from __future__ import annotations

from tinker import types as tt
from tinker.proto import tinker_public_pb2 as pb

from kitchen.ports.tinker_ext import STEP_METRIC
from kitchen.ports.types import LOSS_FNS, AdamParams
from kitchen.serve import wire
from kitchen.serve.endpoints.context import PROTO, ServeContext, parse
from kitchen.serve.errors import RequestError
from kitchen.serve.routes import Call, Router
from kitchen.serve.value_checks import check_adam


class TrainingEndpoints:
    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx

    def register(self, r: Router) -> None:
        r.add("POST", "forward_backward", self.forward_backward)
        r.add("POST", "optim_step", self.optim_step)

    def forward_backward(self, call: Call) -> dict:
        body = call.body
        if not isinstance(body, (bytes, bytearray)):
            raise RequestError(415, f"forward_backward expects a protobuf body (Content-Type: {PROTO})")
        msg = pb.ForwardBackwardRequest()
        try:
            msg.ParseFromString(bytes(body))
        except Exception as exc:  # noqa: BLE001 - a bad protobuf is the client's 400
            raise RequestError(400, f"cannot decode ForwardBackwardRequest protobuf: {exc}") from None
        worker = self.ctx.state.model(msg.model_id)
        if msg.loss_fn not in LOSS_FNS:
            raise RequestError(400, f"unsupported loss_fn {msg.loss_fn!r}; kitchen serve supports {', '.join(LOSS_FNS)}")
        try:
            data = wire.datums_from_proto(msg, self.ctx.vocab_size(worker.base_model))
            config = wire.loss_config_from_proto(msg)
        except wire.WireError as exc:
            raise RequestError(400, str(exc)) from None
        loss_fn, forward_only = msg.loss_fn, msg.forward_only

        def work() -> bytes:
            if forward_only:
                result = worker.client.forward(data, loss_fn).result()
            else:
                result = worker.client.forward_backward(data, loss_fn, config or None).result()
            return wire.fb_result_to_proto(result, data)

        return self.ctx.on_model(worker, work)

    def optim_step(self, call: Call) -> dict:
        req = parse(tt.OptimStepRequest, call.body, ("adam_params", "optimizer_params"))
        worker = self.ctx.state.model(req.model_id)
        p = req.optim_params
        if not isinstance(p, tt.AdamParams):
            raise RequestError(400, "kitchen serve supports the AdamW optimizer only")
        check_adam(p.learning_rate, p.beta1, p.beta2, p.eps, p.weight_decay, p.grad_clip_norm)
        params = AdamParams(learning_rate=p.learning_rate, beta1=p.beta1, beta2=p.beta2, eps=p.eps,
                            weight_decay=p.weight_decay, grad_clip_norm=p.grad_clip_norm)

        def work() -> dict:
            result = worker.client.optim_step(params).result()
            worker.steps = result.step
            metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
            metrics[STEP_METRIC] = float(result.step)
            return {"metrics": metrics, "type": "optim_step"}

        return self.ctx.on_model(worker, work)
