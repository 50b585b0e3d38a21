"""``kitchen serve`` under bad input: options, HTTP abuse, limits, logs, metrics, SIGTERM.

Everything runs the real server in a subprocess and talks to it over loopback HTTP
(httpx, or a raw socket where httpx refuses to send the malformed request).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from conftest import SERVE_KEY as KEY
from kitchen.serve.testing import serve_subprocess

H = {"X-API-Key": KEY}


def _serve(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kitchen.cli", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "KITCHEN_SERVE_API_KEY": KEY, **(env or {})})


def _one_paragraph(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "listening" not in proc.stdout, proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


def test_bad_options_exit_2_with_one_paragraph(tmp_path):
    _one_paragraph(_serve("--backend", "bogus", "--port", "0"), "--backend", "local", "noop")
    _one_paragraph(_serve("--port", "70000", "--backend", "noop"), "--port 70000", "0-65535")
    _one_paragraph(_serve("--faults", "garbage", "--backend", "noop", "--port", "0"), "--faults", "ENDPOINT:KIND:COUNT")
    _one_paragraph(_serve("--log-level", "loud", "--backend", "noop", "--port", "0"), "--log-level")
    _one_paragraph(_serve("--max-loaded-samplers", "0", "--backend", "noop", "--port", "0"), "--max-loaded-samplers")
    _one_paragraph(_serve("--header-timeout-s", "0", "--backend", "noop", "--port", "0"), "--header-timeout-s", "> 0")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_paragraph(_serve("--state-dir", str(blocker / "state"), "--backend", "noop", "--port", "0"), "--state-dir", "not writable")
    _one_paragraph(_serve("--model", "./no/such/model", "--port", "0"), "--model", "does not exist")


def test_busy_port_is_exit_2(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        port = s.getsockname()[1]
        _one_paragraph(_serve("--port", str(port), "--backend", "noop", "--state-dir", str(tmp_path)), f"--port {port}", "already in use")
    finally:
        s.close()


def _raw(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(request)
        c.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                return out
            out += chunk


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def guarded_server():
    with serve_subprocess(KEY, "noop", log_level="INFO", extra_args=("--max-body-mb", "4", "--max-decompression-ratio", "20")) as srv:
        yield srv


def test_auth_is_checked_before_the_body_is_read(guarded_server):
    """A huge unauthenticated upload is refused from its headers; server memory does not move."""
    url = guarded_server.base_url
    rss0 = _rss_kb(guarded_server.process.pid)

    def body():
        for _ in range(200):  # 200 MB if it were read
            yield b"x" * (1 << 20)

    try:
        r = httpx.post(f"{url}/api/v1/create_session", content=body(), headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 401 and "API key" in r.json()["error"]
    except httpx.HTTPError:
        pass  # the server answered 401 and closed the socket while we were still sending: also fine
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))  # ~2 KB that expands to 64 MB
    r = httpx.post(f"{url}/api/v1/create_session", content=bomb, headers={"Content-Encoding": "zstd"})
    assert r.status_code == 401
    assert _rss_kb(guarded_server.process.pid) - rss0 < 50_000  # KB


def test_body_and_decompression_limits_are_413(guarded_server):
    import zstandard

    url = guarded_server.base_url
    r = httpx.post(f"{url}/api/v1/create_session", content=b"{" + b" " * (5 << 20) + b"}", headers=H)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (3 << 20))  # under the body limit, far over 20x
    r = httpx.post(f"{url}/api/v1/create_session", content=bomb, headers={**H, "Content-Encoding": "zstd"})
    assert r.status_code == 413 and "zstd" in r.json()["error"]
    ok = zstandard.ZstdCompressor().compress(json.dumps({"tags": [], "user_metadata": {"a": "b"}, "sdk_version": "0.38.0"}).encode())
    r = httpx.post(f"{url}/api/v1/create_session", content=ok, headers={**H, "Content-Encoding": "zstd",
                                                                          "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["session_id"]


def test_malformed_http_is_4xx_never_500(guarded_server):
    url, port = guarded_server.base_url, guarded_server.port
    resp = _raw(port, b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                + b"\r\nContent-Length: abc\r\n\r\n{}")
    assert resp.startswith(b"HTTP/1.1 4"), resp[:200]
    deep = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(f"{url}/api/v1/create_session", content=deep, headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(f"{url}/api/v1/create_session", content=b"\x28\xb5\x2f\xfd garbage", headers={**H, "Content-Encoding": "zstd"})
    assert r.status_code == 400
    r = httpx.post(f"{url}/api/v1/create_session", content=b"{}", headers={**H, "Content-Encoding": "br"})
    assert r.status_code == 415
    r = httpx.get(f"{url}/api/v1/training_runs?limit=abc", headers=H)
    assert r.status_code == 400 and "limit" in r.json()["error"]
    r = httpx.post(f"{url}/api/v1/copy_weights", json={"model_id": "m", "path": "x"}, headers=H)
    assert r.status_code == 400 and "not offered" in r.json()["error"]
    assert "Traceback" not in guarded_server.log() and "internal error" not in guarded_server.log()


def test_sparse_tensor_claiming_a_huge_shape_is_400_without_allocating(guarded_server, sdk_env):
    import numpy as np
    import tinker
    from tinker.proto import tinker_public_pb2 as pb

    service = tinker.ServiceClient(base_url=guarded_server.base_url)
    training = service.create_lora_training_client(base_model="noop", rank=4).result()
    model_id = training.get_info().model_id
    msg = pb.ForwardBackwardRequest(model_id=model_id, loss_fn="cross_entropy")
    d = msg.data.add()
    d.model_input.add().encoded_text.tokens = np.asarray([1, 2, 3], dtype=np.int32).tobytes()
    t = d.loss_fn_inputs["target_tokens"]
    t.dtype = pb.DTYPE_INT64
    t.shape.extend([3000, 3000])
    t.sparse_csr.crow_indices = np.zeros(3001, dtype=np.int64).tobytes()
    rss0 = _rss_kb(guarded_server.process.pid)
    r = httpx.post(f"{guarded_server.base_url}/api/v1/forward_backward", content=msg.SerializeToString(),
                   headers={**H, "Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and "3000" in r.json()["error"]
    assert _rss_kb(guarded_server.process.pid) - rss0 < 20_000
    service.close("success").result()


def test_checkpoint_names_are_checked_at_save_with_the_load_rule(guarded_server, sdk_env):
    import tinker

    service = tinker.ServiceClient(base_url=guarded_server.base_url)
    training = service.create_lora_training_client(base_model="noop", rank=4).result()
    for bad in ("has space", "a:b", "../up"):
        with pytest.raises(tinker.BadRequestError, match="not allowed"):
            training.save_state(bad).result()
        with pytest.raises(tinker.BadRequestError):
            training.save_weights_for_sampler(bad).result()
    path = training.save_state("good-name_1.0").result().path
    service.create_training_client_from_state(path)
    service.close("success").result()


def test_access_log_one_line_per_request_and_no_key(guarded_server):
    url = guarded_server.base_url
    marker = f"/api/v1/no-such-endpoint-{time.monotonic_ns()}"
    r = httpx.get(url + marker, headers=H)
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]
    time.sleep(0.3)
    lines = [ln for ln in guarded_server.log().splitlines() if marker in ln]
    assert len(lines) == 1 and " 404 " in lines[0] and "kitchen.serve.access" in lines[0], lines
    assert KEY not in guarded_server.log()


def test_metrics_scraped_over_loopback(guarded_server, sdk_env):
    url = guarded_server.base_url
    assert httpx.get(f"{url}/metrics").status_code == 401
    httpx.get(f"{url}/api/v1/healthz", headers=H)
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    healthz = [s for s in fams["kitchen_serve_requests"].samples
               if s.labels.get("endpoint") == "healthz" and s.labels.get("status") == "200" and s.name.endswith("_total")]
    assert healthz and healthz[0].value >= 1
    assert "kitchen_serve_request_seconds" in fams and "kitchen_serve_sessions" in fams
    assert fams["process_resident_memory_bytes"].samples[0].value > 10e6
    assert "kitchen_serve_loaded_samplers" in fams


def test_idle_connections_do_not_hold_the_server(guarded_server):
    socks = [socket.create_connection(("127.0.0.1", guarded_server.port)) for _ in range(40)]
    try:
        r = httpx.get(f"{guarded_server.base_url}/api/v1/healthz", headers=H, timeout=5)
        assert r.status_code == 200
    finally:
        for s in socks:
            s.close()


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closes ``sock`` (sending one byte of ``trickle`` every 0.2 s), or None."""
    import select

    t0 = time.monotonic()
    for i in range(int(seconds / 0.2)):
        if i < len(trickle):
            try:
                sock.sendall(trickle[i:i + 1])
            except OSError:
                return time.monotonic() - t0
        if select.select([sock], [], [], 0.2)[0]:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - t0
            except OSError:
                return time.monotonic() - t0
    return None


def test_slow_header_and_silent_connections_are_dropped(tmp_path):
    """A client that trickles its request head (slowloris), on a new or a kept-alive
    connection, or sends nothing at all, is disconnected once --header-timeout-s has
    passed; a slow *body* after a prompt head is not, and normal clients are served."""
    with serve_subprocess(KEY, "noop", state_dir=str(tmp_path / "s"), extra_args=("--header-timeout-s", "1")) as srv:
        head = b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\nX-Pad: " + b"a" * 200
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        kept = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        kept.sendall(head + b"\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")  # served; the connection stays open (keep-alive)
        r = httpx.get(f"{srv.base_url}/api/v1/healthz", headers=H, timeout=5)
        assert r.status_code == 200  # a normal client is not held up
        for name, sock, trickle in (("silent", silent, b""), ("slow head", slow, head), ("slow head on a kept-alive connection", kept, head)):
            took = _closed_within(sock, 10.0, trickle)
            assert took is not None and took < 6.0, f"{name} connection still open after 10 s"
            sock.close()
        # a prompt head with a body that takes longer than the head deadline is still answered
        body = b'{"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}'
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as c:
            c.sendall(b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: "
                      + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
            time.sleep(2.0)
            c.sendall(body[5:])
            assert c.recv(65536).startswith(b"HTTP/1.1 200")
        assert httpx.get(f"{srv.base_url}/api/v1/healthz", headers=H, timeout=5).status_code == 200


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path):
    with serve_subprocess(KEY, "noop", state_dir=str(tmp_path / "state")) as srv:
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        body = b'{"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}'
        c.sendall(b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: "
                  + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
        time.sleep(0.5)
        srv.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        c.sendall(body[5:])
        resp = b""
        while b"session_id" not in resp:
            chunk = c.recv(65536)
            if not chunk:
                break
            resp += chunk
        c.close()
        assert resp.startswith(b"HTTP/1.1 200"), resp[:300]
        assert b"session_id" in resp
        assert srv.process.wait(timeout=30) == 0, srv.log()
        assert "stopped" in srv.log()


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
