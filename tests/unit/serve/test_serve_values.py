"""``kitchen serve``: every bad value is a 400 with a message, checked at the wire (issue 23,
item B), and what clients send cannot corrupt the logs (item C).

The real noop server over loopback HTTP; JSON bodies are written by hand where the SDK
would not send the value (NaN, Infinity), the forward_backward protobuf is built with the
SDK's own message types.
"""

from __future__ import annotations

import socket
import time

import httpx
import numpy as np
import pytest
from tinker.proto import tinker_public_pb2 as pb

from conftest import SERVE_KEY as KEY
from kitchen.serve.testing import serve_subprocess

H = {"X-API-Key": KEY}
JSON = {**H, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_subprocess(KEY, "noop", state_dir=str(tmp_path_factory.mktemp("values")), log_level="INFO") as srv:
        yield srv


@pytest.fixture(scope="module")
def model(server):
    url = server.base_url
    sid = httpx.post(f"{url}/api/v1/create_session", json={"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"},
                     headers=H).json()["session_id"]
    r = httpx.post(f"{url}/api/v1/create_model", headers=H, json={
        "session_id": sid, "model_seq_id": 0, "base_model": "noop",
        "lora_config": {"rank": 4, "seed": 0, "train_mlp": True, "train_attn": True, "train_unembed": False}})
    httpx.post(f"{url}/api/v1/retrieve_future", json={"request_id": r.json()["request_id"]}, headers=H, timeout=30)
    return sid, r.json()["model_id"]


def _sample_body(prompt: str = "[1, 2, 3]", **params: str) -> bytes:
    sp = {"max_tokens": "4", "temperature": "1.0", "top_p": "1.0", "top_k": "-1", **params}
    sp_json = ", ".join(f'"{k}": {v}' for k, v in sp.items())
    return (f'{{"base_model": "noop", "num_samples": 1, "prompt": {{"chunks": [{{"type": "encoded_text", '
            f'"tokens": {prompt}}}]}}, "sampling_params": {{{sp_json}}}}}').encode()


@pytest.mark.parametrize("params, needle", [
    ({"temperature": "NaN"}, "temperature"), ({"temperature": "Infinity"}, "temperature"),
    ({"temperature": "-1"}, "temperature"), ({"top_p": "NaN"}, "top_p"), ({"top_p": "0"}, "top_p"),
    ({"top_p": "1.5"}, "top_p"), ({"top_k": "-5"}, "top_k"),
])
def test_bad_sampling_params_are_400(server, params, needle):
    r = httpx.post(f"{server.base_url}/api/v1/asample", content=_sample_body(**params), headers=JSON)
    assert r.status_code == 400 and needle in r.json()["error"], r.text


@pytest.mark.parametrize("prompt, needle", [("[1, -3, 2]", "-3"), ("[1, 257]", "vocabulary of 257")])
def test_out_of_vocabulary_prompt_is_400(server, prompt, needle):
    r = httpx.post(f"{server.base_url}/api/v1/asample", content=_sample_body(prompt), headers=JSON)
    assert r.status_code == 400 and needle in r.json()["error"], r.text


def _fb(model_id: str, tokens: list[int], target: np.ndarray, weights: np.ndarray | None = None) -> bytes:
    msg = pb.ForwardBackwardRequest(model_id=model_id, loss_fn="cross_entropy")
    d = msg.data.add()
    d.model_input.add().encoded_text.tokens = np.asarray(tokens, dtype=np.int32).tobytes()
    t = d.loss_fn_inputs["target_tokens"]
    t.dtype = pb.DTYPE_FLOAT32 if target.dtype == np.float32 else pb.DTYPE_INT64
    t.shape.extend([len(target)])
    t.dense = target.tobytes()
    if weights is not None:
        w = d.loss_fn_inputs["weights"]
        w.dtype = pb.DTYPE_FLOAT32
        w.shape.extend([len(weights)])
        w.dense = weights.astype(np.float32).tobytes()
    return msg.SerializeToString()


def test_bad_forward_backward_values_are_400(server, model):
    _, mid = model
    url, proto = server.base_url, {**H, "Content-Type": "application/x-protobuf"}
    cases = [
        (_fb(mid, [1, 2, 3], np.asarray([2, 3, 4], dtype=np.int64)), None),  # fine
        (_fb(mid, [1, -2, 3], np.asarray([2, 3, 4], dtype=np.int64)), "token id -2"),
        (_fb(mid, [1, 2, 300], np.asarray([2, 3, 4], dtype=np.int64)), "vocabulary of 257"),
        (_fb(mid, [1, 2, 3], np.asarray([2, 3, 999], dtype=np.int64)), "vocabulary of 257"),
        (_fb(mid, [1, 2, 3], np.asarray([2.0, 3.5, 4.0], dtype=np.float32)), "whole numbers"),
        (_fb(mid, [1, 2, 3], np.asarray([2, 3, 4], dtype=np.int64), np.asarray([1, np.nan, 1])), "finite"),
        (_fb(mid, [1, 2, 3], np.asarray([2, 3, 4], dtype=np.int64), np.asarray([1, np.inf, 1])), "finite"),
    ]
    for body, needle in cases:
        r = httpx.post(f"{url}/api/v1/forward_backward", content=body, headers=proto)
        if needle is None:
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 400 and needle in r.json()["error"], (needle, r.text)


@pytest.mark.parametrize("field, value, needle", [
    ("learning_rate", "Infinity", "learning_rate"), ("learning_rate", "NaN", "learning_rate"),
    ("learning_rate", "-1e-4", "learning_rate"), ("beta1", "1.0", "beta1"), ("beta1", "-0.1", "beta1"),
    ("beta2", "1.5", "beta2"), ("eps", "0", "eps"), ("eps", "-1e-8", "eps"), ("weight_decay", "NaN", "weight_decay"),
])
def test_bad_adam_params_are_400(server, model, field, value, needle):
    _, mid = model
    adam = {"learning_rate": "1e-4", "beta1": "0.9", "beta2": "0.95", "eps": "1e-8", field: value}
    body = (f'{{"model_id": "{mid}", "adam_params": {{' + ", ".join(f'"{k}": {v}' for k, v in adam.items()) + "}}").encode()
    r = httpx.post(f"{server.base_url}/api/v1/optim_step", content=body, headers=JSON)
    assert r.status_code == 400 and needle in r.json()["error"], r.text


def test_a_client_that_disconnects_mid_body_is_an_info_line_not_a_500(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: "
                  + KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"tags\": [")
        time.sleep(0.3)
    time.sleep(0.5)
    log = server.log()
    assert "disconnected while sending POST /api/v1/create_session" in log, log[-2000:]
    assert "Traceback" not in log and "internal error" not in log


def test_access_log_escapes_control_characters_in_the_path(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(b"GET /api/v1/x%1b%5b31mRED%00end HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n")
        assert c.recv(65536).startswith(b"HTTP/1.1 404")
    time.sleep(0.3)
    log = server.log()
    assert "\x1b" not in log and "\x00" not in log
    assert "/api/v1/x\\x1b[31mRED\\x00end" in log, [ln for ln in log.splitlines() if "RED" in ln]
