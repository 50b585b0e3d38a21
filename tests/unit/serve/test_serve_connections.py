"""``kitchen serve`` against clients without the key: connection limits and request-head limits.

Real server in a subprocess, real sockets on loopback (issue 23 item 1): idle or 401-ing
sockets, however many, never lock out a client with the key; a request head with too
many lines or bytes is a 431 before the parser sees it, so the server's memory stays
flat and one huge header value does not stall anyone else.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import SERVE_KEY as KEY
from kitchen.serve.connection_guard import ConnectionTable
from kitchen.serve.testing import serve_subprocess

H = {"X-API-Key": KEY}
UNKEYED = b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
KEYED = b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n\r\n"


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One whole response from ``sock``, head and body (b"" when the server closed it)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while True:
            end = out.find(b"\r\n\r\n")
            if end >= 0:
                length = 0
                for line in out[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(out) >= end + 4 + length:
                    return out
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    return out


def _is_closed(sock: socket.socket, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.1)[0]:
            try:
                if sock.recv(65536) == b"":
                    return True
            except OSError:
                return True
    return False


@pytest.fixture
def sdk_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)


def _train_step_s(base_url: str, steps: int = 3) -> float:
    """Seconds for a fresh SDK client to create a model and run ``steps`` forward_backward + optim_step."""
    import tinker
    from tinker import types

    datum = types.Datum(model_input=types.ModelInput.from_ints(list(range(1, 17))),
                        loss_fn_inputs={"target_tokens": list(range(2, 18)), "weights": [1.0] * 16})
    t0 = time.perf_counter()
    service = tinker.ServiceClient(base_url=base_url)
    training = service.create_lora_training_client(base_model="noop", rank=4).result()
    for _ in range(steps):
        training.forward_backward([datum], "cross_entropy").result()
        training.optim_step(types.AdamParams(learning_rate=1e-4)).result()
    service.close("success").result()
    return time.perf_counter() - t0


def test_300_idle_and_401_sockets_do_not_deny_a_keyed_sdk_client(tmp_path, sdk_env):
    with serve_subprocess(KEY, "noop", state_dir=str(tmp_path / "s")) as srv:
        solo = _train_step_s(srv.base_url)
        socks = []
        try:
            for i in range(300):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                if i % 3:
                    s.sendall(UNKEYED)  # 401, then kept alive
                socks.append(s)  # every third one sends nothing at all
            time.sleep(0.3)
            loaded = _train_step_s(srv.base_url)
            with httpx.Client(timeout=5) as c:
                codes = [c.get(f"{srv.base_url}/api/v1/healthz", headers=H).status_code for _ in range(20)]
            assert codes == [200] * 20
        finally:
            for s in socks:
                s.close()
        assert loaded < max(3 * solo, solo + 5.0), (solo, loaded)
        assert "Traceback" not in srv.log()


def test_unkeyed_connections_are_closed_first_and_keyed_ones_kept(tmp_path):
    args = ("--max-connections", "20", "--max-connections-per-client", "10")
    with serve_subprocess(KEY, "noop", state_dir=str(tmp_path / "s"), extra_args=args) as srv:
        keyed = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        keyed.sendall(KEYED)
        assert _response(keyed).startswith(b"HTTP/1.1 200")
        flood = []
        for _ in range(40):  # four times the per-client limit, all 401-ing
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(UNKEYED)
            flood.append(s)
        time.sleep(0.3)
        keyed.sendall(KEYED)  # the same kept-alive connection is still served
        assert _response(keyed).startswith(b"HTTP/1.1 200")
        assert httpx.get(f"{srv.base_url}/api/v1/healthz", headers=H, timeout=5).status_code == 200
        closed = sum(_is_closed(s, 0.2) for s in flood)
        assert closed >= 40 - 10, closed  # the oldest unauthenticated ones made room
        for s in flood:
            s.close()
        keyed.close()


def test_a_full_table_of_keyed_connections_refuses_the_next(tmp_path):
    args = ("--max-connections", "50", "--max-connections-per-client", "3")
    with serve_subprocess(KEY, "noop", state_dir=str(tmp_path / "s"), extra_args=args) as srv:
        keyed = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(KEYED)
            assert _response(s).startswith(b"HTTP/1.1 200")
            keyed.append(s)
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        assert _is_closed(extra)  # nothing idle and unauthenticated to close: refused
        extra.close()
        for s in keyed:
            s.sendall(KEYED)
            assert _response(s).startswith(b"HTTP/1.1 200")
            s.close()
        time.sleep(0.3)
        assert httpx.get(f"{srv.base_url}/api/v1/healthz", headers=H, timeout=5).status_code == 200


@pytest.fixture(scope="module")
def head_server():
    with serve_subprocess(KEY, "noop", extra_args=("--max-headers", "20", "--max-header-kb", "8")) as srv:
        yield srv


def _head(n_headers: int, pad: int = 0) -> bytes:
    lines = [b"GET /api/v1/healthz HTTP/1.1", b"Host: x", b"X-API-Key: " + KEY.encode()]
    lines += [b"h%d: v" % i for i in range(n_headers - 2)]
    if pad:
        lines[-1] += b"a" * pad
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_head_limits_are_431_and_exact_limits_pass(head_server):
    port = head_server.port
    for head, want in ((_head(20), b"HTTP/1.1 200"), (_head(21), b"HTTP/1.1 431"),
                       (_head(5, pad=7000), b"HTTP/1.1 200"), (_head(5, pad=9000), b"HTTP/1.1 431")):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head)
            resp = _response(s)
            assert resp.startswith(want), (len(head), head.count(b"\n"), resp[:100])
    # a limit on the second request of a kept-alive connection too
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_head(3))
        assert _response(s).startswith(b"HTTP/1.1 200")
        s.sendall(_head(40))
        assert b"431" in _response(s).split(b"\r\n")[0]
    # the head arriving a byte or a line at a time is counted the same
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for line in _head(21).split(b"\r\n")[:-1]:
            try:
                s.sendall(line + b"\r\n")
            except OSError:
                break
        assert _response(s).startswith(b"HTTP/1.1 431")


def test_a_header_flood_is_431_and_rss_stays_flat(head_server):
    pid = head_server.process.pid
    rss0 = peak = _rss_kb(pid)
    answers: list[bytes] = []
    stop = time.monotonic() + 3.0
    sent = 0
    while time.monotonic() < stop:  # reconnect and flood header lines again, for 3 s
        with socket.create_connection(("127.0.0.1", head_server.port), timeout=5) as s:
            try:
                s.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n")
                for i in range(200):
                    chunk = b"".join(b"h%07d: v\r\n" % (i * 1000 + j) for j in range(1000))
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            answers.append(_response(s, 1.0))
        peak = max(peak, _rss_kb(pid))
    assert answers and all(a.startswith(b"HTTP/1.1 431") or a == b"" for a in answers)
    assert any(a.startswith(b"HTTP/1.1 431") for a in answers)
    assert peak - rss0 < 30_000, (rss0, peak, sent)  # KB
    assert httpx.get(f"{head_server.base_url}/api/v1/healthz", headers=H, timeout=5).status_code == 200


def test_a_90_mb_header_value_does_not_stall_others(head_server):
    pid = head_server.process.pid
    rss0 = _rss_kb(pid)
    done = threading.Event()
    answer: list[bytes] = []

    def attacker() -> None:
        try:
            with socket.create_connection(("127.0.0.1", head_server.port), timeout=10) as s:
                try:
                    s.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    piece = b"a" * (1 << 20)
                    for _ in range(90):
                        s.sendall(piece)
                    s.sendall(b"\r\n\r\n")
                except OSError:
                    pass
                answer.append(_response(s, 2.0))
        finally:
            done.set()

    t = threading.Thread(target=attacker)
    t.start()
    took = []
    with httpx.Client(timeout=10) as c:
        while not done.is_set() or len(took) < 5:
            t0 = time.perf_counter()
            assert c.get(f"{head_server.base_url}/api/v1/healthz", headers=H).status_code == 200
            took.append(time.perf_counter() - t0)
    t.join()
    assert max(took) < 1.0, took
    assert answer and (answer[0].startswith(b"HTTP/1.1 431") or answer[0] == b"")
    assert _rss_kb(pid) - rss0 < 30_000


def test_connection_options_are_checked():
    env = {**os.environ, "KITCHEN_SERVE_API_KEY": KEY}
    for flag, value in (("--max-connections", "0"), ("--max-connections-per-client", "0"), ("--max-headers", "0"),
                        ("--max-header-kb", "0")):
        proc = subprocess.run([sys.executable, "-m", "kitchen.serve", flag, value, "--backend", "noop", "--port", "0"],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 2 and flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_bad_precision_is_exit_2_naming_what_is_allowed():
    """--precision is checked before the server starts, through `kitchen serve` as a user types it."""
    env = {**os.environ, "KITCHEN_SERVE_API_KEY": KEY}
    proc = subprocess.run([sys.executable, "-m", "kitchen.cli", "serve", "--precision", "fp8", "--backend", "noop",
                           "--port", "0"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "--precision 'fp8'" in proc.stderr and "fp32" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


class _Proto:
    def __init__(self, host: str, port: int, busy: bool = False) -> None:
        self.client = (host, port)
        self.client_host = host
        self.kitchen_authenticated = False
        self.cycle = type("C", (), {"response_complete": not busy})() if busy else None
        self.transport = type("T", (), {"closed": False, "close": lambda self: setattr(self, "closed", True)})()


def test_connection_table_evicts_oldest_idle_unauthenticated_first():
    table = ConnectionTable(max_connections=4, max_per_client=3)
    a1, a2, a3 = _Proto("a", 1), _Proto("a", 2), _Proto("a", 3)
    for p in (a1, a2, a3):
        assert table.admit(p)
    table.authenticated(("a", 1))
    a4 = _Proto("a", 4)
    assert table.admit(a4)  # per-client limit: a2 (oldest unauthenticated of host a) goes
    assert a2.transport.closed and not a1.transport.closed and len(table) == 3
    b1 = _Proto("b", 1)
    assert table.admit(b1) and len(table) == 4
    b2 = _Proto("b", 2)
    assert table.admit(b2)  # total limit: the oldest unauthenticated anywhere (a3)
    assert a3.transport.closed
    busy = _Proto("c", 1, busy=True)
    table.remove(b1)
    assert table.admit(busy)
    for p in (a4, b2):
        table.authenticated(p.client)
    assert not table.admit(_Proto("d", 1))  # all authenticated or mid-request: refused
    assert table.refused == 1 and table.evicted == 2
