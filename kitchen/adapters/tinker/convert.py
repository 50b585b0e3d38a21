"""Conversions between kitchen port types (plain lists) and the tinker SDK's types."""

from __future__ import annotations

import numpy as np
from tinker import types as tt

from kitchen.ports.tinker_ext import LOSS_METRIC, total_weight
from kitchen.ports.types import (
    Datum,
    ForwardBackwardResult,
    SampledSequence,
    SampleResult,
    SamplingParams,
)

INT_KEYS = {"target_tokens"}


def to_tinker_datum(d: Datum) -> tt.Datum:
    inputs: dict[str, tt.TensorData] = {}
    for key, values in d.loss_fn_inputs.items():
        if key in INT_KEYS:
            arr = np.asarray(values, dtype=np.int64)
            inputs[key] = tt.TensorData(data=arr, dtype="int64", shape=[len(arr)])
        else:
            arr = np.asarray(values, dtype=np.float32)
            inputs[key] = tt.TensorData(data=arr, dtype="float32", shape=[len(arr)])
    return tt.Datum(model_input=tt.ModelInput.from_ints(list(d.model_input)), loss_fn_inputs=inputs)


def fb_output_to_result(out: tt.ForwardBackwardOutput, data: list[Datum]) -> ForwardBackwardResult:
    """Tinker reports ``loss:sum`` (sum of weighted token losses); the port wants the
    weighted token mean, so divide by the total weight."""
    metrics: dict[str, float] = {}
    for key, value in out.metrics.items():
        name = key.split(":", 1)[0]
        if name == "loss":
            continue
        metrics[name] = float(value)
    loss_sum = out.metrics.get("loss:sum")
    logprobs = [[float(x) for x in o["logprobs"].data] if "logprobs" in o else [] for o in out.loss_fn_outputs]
    if loss_sum is None:  # fall back to the cross-entropy definition
        loss_sum = -sum(
            lp * w for d, lps in zip(data, logprobs) for lp, w in zip(lps, d.loss_fn_inputs.get("weights", [1.0] * len(lps)))
        )
    metrics.pop(LOSS_METRIC.split(":", 1)[0], None)
    metrics["loss_sum"] = float(loss_sum)
    # kitchen serve reports the port's loss as the backend optimised it; real Tinker does not.
    loss = out.metrics.get(LOSS_METRIC)
    if loss is None:
        loss = float(loss_sum) / total_weight(data)
    return ForwardBackwardResult(loss=float(loss), logprobs=logprobs, metrics=metrics)


def to_tinker_sampling_params(p: SamplingParams) -> tt.SamplingParams:
    stop = list(p.stop) if p.stop else None
    return tt.SamplingParams(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, stop=stop, seed=p.seed)


def sample_response_to_result(resp: tt.SampleResponse) -> SampleResult:
    seqs = []
    for s in resp.sequences:
        tokens = [int(t) for t in s.tokens]
        lps = s.logprobs
        seqs.append(SampledSequence(tokens=tokens, logprobs=[float(x) for x in lps] if lps is not None else [0.0] * len(tokens),
                                    stop_reason="stop" if s.stop_reason == "stop" else "length"))
    return SampleResult(sequences=seqs)
