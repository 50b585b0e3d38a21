"""Wire conversions for ``kitchen serve``: Tinker proto/JSON <-> kitchen port types.

The SDK sends ``forward_backward`` as protobuf (``tinker.proto.tinker_public_pb2``) and
expects ``ForwardBackwardOutput`` and ``SampleResponse`` results as protobuf too (it
refuses JSON for those two); everything else is JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tinker.proto import tinker_public_pb2 as pb

from kitchen.ports.tinker_ext import LOSS_METRIC, total_weight
from kitchen.ports.types import Datum, ForwardBackwardResult, SampleResult

_NP = {
    pb.DTYPE_FLOAT32: np.float32,
    pb.DTYPE_INT64: np.int64,
    pb.DTYPE_INT32: np.int32,
}


class WireError(ValueError):
    """A request the server cannot decode (answered with 400)."""


def _tensor_to_list(t: "pb.Tensor", name: str, expected: int, vocab_size: int | None = None) -> list[Any]:
    """The tensor's values, flattened; shapes and sizes are checked against the body and
    against ``expected`` (the datum's token count) *before* anything is allocated, so a
    small body cannot claim a huge tensor."""
    np_dtype = _NP.get(t.dtype)
    if np_dtype is None:
        raise WireError(f"loss_fn_inputs[{name!r}] has unsupported dtype {t.dtype}")
    shape = [int(x) for x in t.shape]
    if any(x < 0 for x in shape):
        raise WireError(f"loss_fn_inputs[{name!r}] has a negative dimension in shape {shape}")
    numel = math.prod(shape) if shape else None
    if numel is not None and numel != expected:
        raise WireError(f"loss_fn_inputs[{name!r}] has shape {shape} ({numel} values) but model_input has {expected} tokens")
    itemsize = np.dtype(np_dtype).itemsize
    which = t.WhichOneof("encoding")
    if which == "sparse_csr":
        if len(shape) != 2:
            raise WireError(f"loss_fn_inputs[{name!r}] is sparse but its shape {shape} is not 2-D")
        sp = t.sparse_csr
        if len(sp.values) % itemsize or len(sp.crow_indices) % 8 or len(sp.col_indices) % 8:
            raise WireError(f"loss_fn_inputs[{name!r}]: sparse buffers are not whole numbers of elements")
        values = np.frombuffer(sp.values, dtype=np_dtype)
        crow = np.frombuffer(sp.crow_indices, dtype=np.int64)
        col = np.frombuffer(sp.col_indices, dtype=np.int64)
        rows, cols = shape
        if len(crow) != rows + 1 or len(col) != len(values) or (len(crow) and (crow[0] != 0 or crow[-1] != len(values))) \
                or np.any(np.diff(crow) < 0) or (len(col) and (col.min() < 0 or col.max() >= cols)):
            raise WireError(f"loss_fn_inputs[{name!r}]: inconsistent sparse CSR indices for shape {shape}")
        dense = np.zeros(rows * cols, dtype=np_dtype)  # == expected values: bounded by the token count
        row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(crow))
        dense[row_of * cols + col] = values
        _check_values(name, dense, vocab_size)
        return dense.tolist()
    if len(t.dense) % itemsize:
        raise WireError(f"loss_fn_inputs[{name!r}]: {len(t.dense)} bytes is not a whole number of {np.dtype(np_dtype).name} values")
    arr = np.frombuffer(t.dense, dtype=np_dtype)
    if len(arr) != expected:
        raise WireError(f"loss_fn_inputs[{name!r}] has {len(arr)} entries but model_input has {expected} tokens")
    _check_values(name, arr, vocab_size)
    return arr.tolist()


def _check_values(name: str, arr: "np.ndarray", vocab_size: int | None = None) -> None:
    """NaN/inf anywhere (a NaN loss weight poisons the gradient, then the weights) and
    fractional target tokens (a float32 target_tokens of 1.5 names no token) are 400s."""
    if not len(arr):
        return
    if name == "target_tokens":
        _check_ids("loss_fn_inputs['target_tokens']", arr, vocab_size)
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        bad = arr[~finite][0]
        raise WireError(f"loss_fn_inputs[{name!r}] holds {bad!r}; values must be finite numbers")
    if name == "target_tokens" and not np.all(arr == np.round(arr)):
        bad = arr[arr != np.round(arr)][0]
        raise WireError(f"loss_fn_inputs['target_tokens'] holds {float(bad)!r}; token ids are whole numbers (send int64)")


def _check_ids(what: str, arr: "np.ndarray", vocab_size: int | None) -> None:
    if not len(arr):
        return
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise WireError(f"{what} has token id {int(lo)}; token ids are >= 0")
    if vocab_size is not None and hi >= vocab_size:
        raise WireError(f"{what} has token id {int(hi)}, outside this model's vocabulary of {vocab_size} "
                        f"(ids 0-{vocab_size - 1})")


def datums_from_proto(msg: "pb.ForwardBackwardRequest", vocab_size: int | None = None) -> list[Datum]:
    """The request's datums, every value checked (token ids within ``vocab_size`` when known)."""
    out: list[Datum] = []
    for i, d in enumerate(msg.data):
        tokens: list[int] = []
        for chunk in d.model_input:
            if chunk.WhichOneof("chunk") not in (None, "encoded_text"):
                raise WireError(f"datum {i}: only token (encoded_text) chunks are supported")
            raw = chunk.encoded_text.tokens
            if len(raw) % 4:
                raise WireError(f"datum {i}: encoded_text.tokens is {len(raw)} bytes, not a whole number of int32 tokens")
            ids = np.frombuffer(raw, dtype=np.int32)
            _check_ids(f"datum {i}: model_input", ids, vocab_size)
            tokens.extend(ids.tolist())
        try:
            inputs = {name: _tensor_to_list(t, name, len(tokens), vocab_size) for name, t in d.loss_fn_inputs.items()}
        except WireError as exc:
            raise WireError(f"datum {i}: {exc}") from None
        if "target_tokens" not in inputs:
            raise WireError(f"datum {i}: loss_fn_inputs needs 'target_tokens'")
        out.append(Datum(model_input=tokens, loss_fn_inputs=inputs))
    if not out:
        raise WireError("forward_backward needs at least one datum")
    return out


def loss_config_from_proto(msg: "pb.ForwardBackwardRequest") -> dict[str, float]:
    cfg: dict[str, float] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for k, v in msg.loss_fn_config_v2.items():
        if v.WhichOneof("value") == "number":
            cfg[k] = float(v.number)
    for k, v in cfg.items():
        if not math.isfinite(v):
            raise WireError(f"loss_fn_config[{k!r}] is {v!r}; values must be finite numbers")
    return cfg


def _metric_key(name: str) -> str:
    if ":" in name:
        return name
    if name.startswith("num_") or name.endswith("_count"):
        return f"{name}:sum"
    return f"{name}:mean"


def fb_result_to_proto(result: ForwardBackwardResult, data: list[Datum]) -> bytes:
    msg = pb.ForwardBackwardOutput()
    msg.loss_fn_output_type = "ArrayRecord"
    rec = msg.loss_fn_outputs.add()
    rec.type_tag = "ArrayRecord"
    rec.num_datums = len(result.logprobs)
    arrays = [np.asarray(lp, dtype=np.float32) for lp in result.logprobs]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    for i, a in enumerate(arrays):
        offsets[i + 1] = offsets[i] + a.nbytes
    bt = rec.fields["logprobs"]
    bt.dtype = pb.DTYPE_FLOAT32
    bt.data = b"".join(a.tobytes() for a in arrays)
    bt.offsets = offsets.tobytes()
    for k, v in result.metrics.items():
        try:
            msg.metrics[_metric_key(k)] = float(v)
        except (TypeError, ValueError):
            continue
    # Tinker's own metric: the sum of the per-token losses (the backend's, when it reports one).
    if "loss:sum" not in result.metrics:
        msg.metrics["loss:sum"] = float(result.loss) * total_weight(data)
    # The port's loss exactly as the backend optimised it (read back by the kitchen adapter).
    msg.metrics[LOSS_METRIC] = float(result.loss)
    return msg.SerializeToString()


def sample_result_to_proto(result: SampleResult, prompt_logprobs: list[float | None] | None) -> bytes:
    msg = pb.SampleResponse()
    for seq in result.sequences:
        s = msg.sequences.add()
        s.stop_reason = pb.STOP_REASON_STOP if seq.stop_reason == "stop" else pb.STOP_REASON_LENGTH
        s.tokens = np.asarray(seq.tokens, dtype=np.int32).tobytes()
        s.logprobs = np.asarray(seq.logprobs, dtype=np.float32).tobytes()
    if prompt_logprobs is not None:
        arr = np.asarray([math.nan if x is None else x for x in prompt_logprobs], dtype=np.float32)
        msg.prompt_logprobs = arr.tobytes()
    return msg.SerializeToString()
