"""A loopback Modal control plane for the real ``modal`` client (MODAL_SERVER_URL=http://127.0.0.1:PORT).

It subclasses the grpclib service base that ships in the modal wheel
(``modal_proto.api_grpc.ModalClientBase``) and implements only the RPCs that
``adapters=modal``'s launch path makes; every other RPC answers UNIMPLEMENTED and is
recorded in ``unimplemented`` (tests assert it stays empty). ``SandboxCreate`` starts a
real ``kitchen serve`` subprocess (local backend) with the key from the requested Secret,
and ``SandboxGetTunnels`` returns a loopback TLS front of it (a self-signed certificate
the test trusts through SSL_CERT_FILE), so the Tinker SDK talks HTTPS to the tunnel as it
would to Modal's. ``calls`` records each request, so a test can assert what Modal would
have been asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from modal_proto import api_grpc, api_pb2

BUILDER_VERSION = "2026.10"
IMPLEMENTED = ("ClientHello", "EnvironmentGetOrCreate", "AppGetOrCreate", "ImageGetOrCreate", "ImageJoinStreaming", "MountGetOrCreate",
               "MountPutFile", "MountBatchedCheckExistence", "SecretGetOrCreate", "VolumeGetOrCreate", "SandboxCreate", "SandboxGetTaskId",
               "SandboxGetTunnels", "SandboxTerminate", "SandboxWait", "AppClientDisconnect", "AppHeartbeat")


def _make_cert(tmp: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _unimplemented(name: str):
    async def handler(self: "FakeModal", stream: Any) -> None:
        self.unimplemented.append(name)
        raise GRPCError(Status.UNIMPLEMENTED, f"the fake Modal server does not implement {name}")

    handler.__name__ = name
    return handler


class _Base(api_grpc.ModalClientBase):
    pass


for _name in list(api_grpc.ModalClientBase.__abstractmethods__):
    if _name not in IMPLEMENTED:
        setattr(_Base, _name, _unimplemented(_name))


class FakeModal(_Base):
    def __init__(self, tmp: Path, *, fail_tunnels: bool = False) -> None:
        self.tmp = tmp
        self.calls: list[tuple[str, Any]] = []
        self.unimplemented: list[str] = []
        self.secrets: dict[str, dict[str, str]] = {}
        self.sandboxes: dict[str, dict[str, Any]] = {}
        self.terminated: list[str] = []
        self.mount_files: dict[str, bytes] = {}  # sha256 -> content uploaded
        self.fail_tunnels = fail_tunnels
        self.cert, self.key = _make_cert(tmp)
        self.state_root = tmp / "volume"
        self._n = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n:06d}"

    async def _record(self, stream: Any, name: str) -> Any:
        req = await stream.recv_message()
        self.calls.append((name, req))
        return req

    def requests(self, name: str) -> list[Any]:
        return [r for n, r in self.calls if n == name]

    async def ClientHello(self, stream: Any) -> None:
        await self._record(stream, "ClientHello")
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def EnvironmentGetOrCreate(self, stream: Any) -> None:
        await self._record(stream, "EnvironmentGetOrCreate")
        settings = api_pb2.EnvironmentSettings(image_builder_version=BUILDER_VERSION)
        await stream.send_message(api_pb2.EnvironmentGetOrCreateResponse(
            environment_id="en-main", metadata=api_pb2.EnvironmentMetadata(name="main", settings=settings)))

    async def AppGetOrCreate(self, stream: Any) -> None:
        await self._record(stream, "AppGetOrCreate")
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id="ap-kitchen"))

    async def AppHeartbeat(self, stream: Any) -> None:
        await self._record(stream, "AppHeartbeat")
        await stream.send_message(Empty())

    async def AppClientDisconnect(self, stream: Any) -> None:
        await self._record(stream, "AppClientDisconnect")
        await stream.send_message(Empty())

    async def ImageGetOrCreate(self, stream: Any) -> None:
        await self._record(stream, "ImageGetOrCreate")
        ok = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
        await stream.send_message(api_pb2.ImageGetOrCreateResponse(image_id=self._id("im"), result=ok,
                                                                   metadata=api_pb2.ImageMetadata()))

    async def ImageJoinStreaming(self, stream: Any) -> None:
        await self._record(stream, "ImageJoinStreaming")
        ok = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
        await stream.send_message(api_pb2.ImageJoinStreamingResponse(result=ok, eof=True))

    async def MountPutFile(self, stream: Any) -> None:
        req = await self._record(stream, "MountPutFile")
        if req.WhichOneof("data_oneof") == "data":
            self.mount_files[req.sha256_hex] = req.data
        await stream.send_message(api_pb2.MountPutFileResponse(exists=req.sha256_hex in self.mount_files))

    async def MountBatchedCheckExistence(self, stream: Any) -> None:
        req = await self._record(stream, "MountBatchedCheckExistence")
        missing = [h for h in req.sha256_hex_hashes if h not in self.mount_files]
        await stream.send_message(api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing))

    async def MountGetOrCreate(self, stream: Any) -> None:
        await self._record(stream, "MountGetOrCreate")
        await stream.send_message(api_pb2.MountGetOrCreateResponse(mount_id=self._id("mo"),
                                                                   handle_metadata=api_pb2.MountHandleMetadata()))

    async def SecretGetOrCreate(self, stream: Any) -> None:
        req = await self._record(stream, "SecretGetOrCreate")
        sid = self._id("st")
        self.secrets[sid] = dict(req.env_dict)
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=sid))

    async def VolumeGetOrCreate(self, stream: Any) -> None:
        await self._record(stream, "VolumeGetOrCreate")
        await stream.send_message(api_pb2.VolumeGetOrCreateResponse(
            volume_id="vo-kitchen", metadata=api_pb2.VolumeMetadata(version=api_pb2.VOLUME_FS_VERSION_V2)))

    async def SandboxCreate(self, stream: Any) -> None:
        req = await self._record(stream, "SandboxCreate")
        sid = self._id("sb")
        env = {}
        for secret_id in req.definition.secret_ids:
            env.update(self.secrets.get(secret_id, {}))
        self.sandboxes[sid] = {"definition": req.definition, "env": env}
        await asyncio.get_running_loop().run_in_executor(None, self._start_serve, sid)
        await stream.send_message(api_pb2.SandboxCreateResponse(sandbox_id=sid))

    def _start_serve(self, sid: str) -> None:
        """Run the requested entrypoint's ``kitchen serve`` here: same options, the volume a local folder."""
        box = self.sandboxes[sid]
        args = list(box["definition"].entrypoint_args)
        assert args[:2] == ["kitchen", "serve"], args
        args = args[2:]
        i = args.index("--state-dir")
        args[i + 1] = str(self.state_root / args[i + 1].removeprefix("/state/"))
        i = args.index("--port")
        args[i + 1] = "0"
        i = args.index("--host")
        args[i + 1] = "127.0.0.1"
        ready = self.tmp / f"{sid}.ready"
        log = open(self.tmp / f"{sid}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "kitchen.serve", *args, "--ready-file", str(ready)],
                                env={**os.environ, **box["env"]}, stdout=log, stderr=subprocess.STDOUT)
        box.update(proc=proc, log=log)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.tmp / f"{sid}.log").read_text(errors="replace"))
            time.sleep(0.05)
        import json

        box["port"] = int(json.loads(ready.read_text())["port"])

    async def SandboxGetTaskId(self, stream: Any) -> None:
        await self._record(stream, "SandboxGetTaskId")
        await stream.send_message(api_pb2.SandboxGetTaskIdResponse(task_id="ta-kitchen"))

    async def SandboxGetTunnels(self, stream: Any) -> None:
        req = await self._record(stream, "SandboxGetTunnels")
        if self.fail_tunnels:
            raise GRPCError(Status.INTERNAL, "tunnel setup failed (injected)")
        box = self.sandboxes[req.sandbox_id]
        if "front" not in box:
            box["front"] = await self._tls_front(box["port"])
        ok = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
        ports = [p.port for p in box["definition"].open_ports.ports]
        await stream.send_message(api_pb2.SandboxGetTunnelsResponse(result=ok, tunnels=[
            api_pb2.TunnelData(container_port=ports[0], host="127.0.0.1", port=box["front"])]))

    async def _tls_front(self, backend_port: int) -> int:
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            br, bw = await asyncio.open_connection("127.0.0.1", backend_port)
            await asyncio.gather(pipe(reader, bw), pipe(br, writer))

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        return server.sockets[0].getsockname()[1]

    async def SandboxTerminate(self, stream: Any) -> None:
        req = await self._record(stream, "SandboxTerminate")
        self.terminated.append(req.sandbox_id)
        self._stop(req.sandbox_id)
        await stream.send_message(api_pb2.SandboxTerminateResponse())

    async def SandboxWait(self, stream: Any) -> None:
        await self._record(stream, "SandboxWait")
        await stream.send_message(api_pb2.SandboxWaitResponse())

    def _stop(self, sid: str) -> None:
        box = self.sandboxes.get(sid, {})
        proc = box.get("proc")
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if box.get("log"):
            box["log"].close()

    def stop_all(self) -> None:
        for sid in list(self.sandboxes):
            self._stop(sid)


@contextlib.contextmanager
def fake_modal(fail_tunnels: bool = False):
    """(FakeModal, env) with the server listening; env points the modal client and httpx at it."""
    with tempfile.TemporaryDirectory(prefix="kitchen-modal-fake-") as tmp:
        fake = FakeModal(Path(tmp), fail_tunnels=fail_tunnels)
        loop = asyncio.new_event_loop()
        started = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            server = Server([fake])
            await server.start("127.0.0.1", 0)
            box["server"], box["port"] = server, server._server.sockets[0].getsockname()[1]
            started.set()
            await server.wait_closed()

        thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
        thread.start()
        started.wait(10)
        env = {"MODAL_SERVER_URL": f"http://127.0.0.1:{box['port']}", "MODAL_TOKEN_ID": "ak-fake-token-id",
               "MODAL_TOKEN_SECRET": "as-fake-token-secret", "SSL_CERT_FILE": str(fake.cert)}
        try:
            yield fake, env
        finally:
            fake.stop_all()
            loop.call_soon_threadsafe(box["server"].close)
            thread.join(10)
