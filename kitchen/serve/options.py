"""``kitchen serve`` options, checked before anything starts.

Both entry points (``kitchen serve`` and ``python -m kitchen.serve``) build a
:class:`ServeOptions` and call :meth:`ServeOptions.validate`, so a bad option is one
paragraph and exit 2 whichever way the server is started, and a server never comes up
half-configured (a typo'd backend used to start a server anyway; a busy port gave a
traceback). This module imports nothing heavy: ``kitchen serve --help`` stays fast.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kitchen.errors import KitchenError

BACKENDS = ("local", "noop")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PRECISIONS = ("fp32", "bf16", "auto")  # the local backend's precision= choices


class ServeOptionError(KitchenError):
    """A ``kitchen serve`` option is invalid (exit 2, one paragraph)."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "local"
    models: list[str] = field(default_factory=list)  # empty = the backend's default list
    state_dir: str | None = None
    latency_ms: float = 0.0
    faults: str | None = None
    stall_s: float | None = None
    ready_file: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None  # several keys, one per line: each sees only what it created
    log_level: str = "WARNING"
    max_loaded_samplers: int = 4
    max_body_mb: float = 256.0
    max_decompression_ratio: float = 64.0
    workers: int = 16
    read_timeout_s: float = 60.0
    idle_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_connections: int = 1024
    max_connections_per_client: int = 256
    max_headers: int = 100
    max_header_kb: float = 64.0
    # bounded work per request (issue 23; see kitchen.serve.sample_budget, futures, http)
    max_sample_tokens_per_request: int = 262_144
    max_sample_tokens_in_flight: int = 1_048_576
    result_ttl_s: float = 600.0
    max_user_metadata_kb: float = 64.0
    max_json_body_mb: float = 16.0
    max_models_per_session: int = 64
    max_models: int = 256
    shutdown_timeout_s: float = 30.0
    public_url: str | None = None  # the host signed download URLs name; default: the bind address
    # how the local backend computes for a client that does not say (kitchen's own tinker adapter
    # sends its run's precision): fp32, so a plain Tinker SDK client gets the same numbers on any
    # CPU and LoRA sessions share the base weights without per-session bf16 copies
    precision: str = "fp32"

    def validate(self) -> "ServeOptions":
        """Raise :class:`ServeOptionError` naming the first bad option; return self."""
        from kitchen.serve.faults import FaultPlan, FaultSpecError

        if self.backend not in BACKENDS:
            raise ServeOptionError(f"--backend {self.backend!r} is not a kitchen serve backend; use one of: {', '.join(BACKENDS)} "
                                   "(local = real torch training, noop = instant fake training for protocol tests).")
        if not (0 <= int(self.port) <= 65535):
            raise ServeOptionError(f"--port {self.port} is out of range; use 0-65535 (0 picks a free port, see --ready-file).")
        level = str(self.log_level).upper()
        if level not in LOG_LEVELS:
            raise ServeOptionError(f"--log-level {self.log_level!r} is not a log level; use one of: {', '.join(LOG_LEVELS)} "
                                   "(INFO logs one access line per request).")
        self.log_level = level
        if self.latency_ms < 0:
            raise ServeOptionError(f"--latency-ms must be >= 0, got {self.latency_ms:g}.")
        if self.stall_s is not None and self.stall_s < 0:
            raise ServeOptionError(f"--stall-s must be >= 0, got {self.stall_s:g}.")
        if str(self.precision).lower() not in PRECISIONS:
            raise ServeOptionError(f"--precision {self.precision!r} is not allowed; use fp32 (the default), bf16 or auto "
                                   "(bf16 autocast where the CPU or GPU computes bf16 natively); a kitchen client's own "
                                   "precision= wins for its sessions.")
        self.precision = str(self.precision).lower()
        for name, value in (("--max-loaded-samplers", self.max_loaded_samplers), ("--workers", self.workers),
                            ("--max-connections", self.max_connections),
                            ("--max-connections-per-client", self.max_connections_per_client),
                            ("--max-headers", self.max_headers),
                            ("--max-sample-tokens-per-request", self.max_sample_tokens_per_request),
                            ("--max-sample-tokens-in-flight", self.max_sample_tokens_in_flight),
                            ("--max-models-per-session", self.max_models_per_session), ("--max-models", self.max_models)):
            if int(value) < 1:
                raise ServeOptionError(f"{name} must be at least 1, got {value}.")
        for name, value in (("--max-body-mb", self.max_body_mb), ("--max-decompression-ratio", self.max_decompression_ratio),
                            ("--read-timeout-s", self.read_timeout_s), ("--idle-timeout-s", self.idle_timeout_s),
                            ("--header-timeout-s", self.header_timeout_s), ("--max-header-kb", self.max_header_kb),
                            ("--result-ttl-s", self.result_ttl_s), ("--max-user-metadata-kb", self.max_user_metadata_kb),
                            ("--max-json-body-mb", self.max_json_body_mb), ("--shutdown-timeout-s", self.shutdown_timeout_s)):
            if not (value > 0 and value != float("inf")):
                raise ServeOptionError(f"{name} must be a finite number > 0, got {value:g}.")
        if self.max_sample_tokens_in_flight < self.max_sample_tokens_per_request:
            raise ServeOptionError(f"--max-sample-tokens-in-flight ({self.max_sample_tokens_in_flight}) is below "
                                   f"--max-sample-tokens-per-request ({self.max_sample_tokens_per_request}): a request "
                                   "the per-request limit allows could never run; raise the first or lower the second.")
        if self.public_url is not None:
            self.public_url = check_public_url(self.public_url)
        try:
            FaultPlan.parse(self.faults if self.faults is not None else os.environ.get("KITCHEN_SERVE_FAULTS"))
        except FaultSpecError as exc:
            source = "--faults" if self.faults is not None else "KITCHEN_SERVE_FAULTS"
            raise ServeOptionError(f"{source}: {exc}.") from None
        if self.api_key_env is not None and not self.api_key_env.strip():
            raise ServeOptionError("--api-key-env is empty; name an environment variable that holds the API key.")
        if self.api_key_file is not None:
            self._check_key_file()
        self._check_state_dir()
        if self.ready_file:
            parent = Path(self.ready_file).expanduser().resolve().parent
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise ServeOptionError(f"--ready-file {self.ready_file}: folder {parent} does not exist or is not writable.")
        return self

    def _check_key_file(self) -> None:
        if self.api_key_env is not None:
            raise ServeOptionError("--api-key-file and --api-key-env both name the keys; use one of them "
                                   "(--api-key-file: one key per line, each client sees only what its key created).")
        path = Path(self.api_key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeOptionError(f"--api-key-file {path} cannot be read ({getattr(exc, 'strerror', None) or exc}); "
                                   "give a text file with one API key per line.") from None
        keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        bad = [k for k in keys if any(c.isspace() for c in k) or not k.isprintable()]
        if not keys or bad:
            raise ServeOptionError(f"--api-key-file {path} has {'no keys' if not keys else 'a key with spaces or control characters'}; "
                                   "give one API key per line (blank lines and lines starting with # are skipped).")

    def _check_state_dir(self) -> None:
        if self.state_dir is None:
            return
        path = Path(self.state_dir).expanduser()
        if path.exists() and not path.is_dir():
            raise ServeOptionError(f"--state-dir {path} exists and is not a folder; point it at a folder kitchen serve may write.")
        try:
            from kitchen.serve.private_files import make_private_dir

            make_private_dir(path)  # 0700: it will hold the URL-signing secret and checkpoints
            fd, probe = tempfile.mkstemp(prefix=".kitchen-write-test-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ServeOptionError(
                f"--state-dir {path} is not writable ({exc.strerror or exc}); kitchen serve keeps checkpoints, sampler "
                "weights and run metadata there. Use a folder you can write, or fix its permissions."
            ) from None

    def bind(self) -> socket.socket:
        """A listening socket on host:port, or a one-paragraph error (busy port, bad host)."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ServeOptionError(f"--host {self.host!r} cannot be resolved ({exc.strerror}); use an address like 127.0.0.1 or 0.0.0.0.") from None
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
            sock.listen(256)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ServeOptionError(f"--port {self.port} on {self.host} is already in use by another process; "
                                       "stop it, pick another port, or use --port 0 for a free one.") from None
            if exc.errno == errno.EACCES:
                raise ServeOptionError(f"--port {self.port} on {self.host} needs privileges this user lacks; use a port above 1023.") from None
            raise ServeOptionError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}.") from None
        sock.setblocking(False)
        return sock


def check_public_url(url: str) -> str:
    """``--public-url`` without a trailing slash, or a ServeOptionError: http(s)://host[:port][/prefix], nothing else."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(url).strip())
    ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ServeOptionError(f"--public-url {url!r} is not a URL kitchen serve can put in download links; use "
                               "http(s)://HOST[:PORT][/PREFIX] as clients reach this server (e.g. behind a reverse proxy), "
                               "without a query string.")
    return str(url).strip().rstrip("/")


def configure_logging(level: str) -> None:
    """Server logs to stderr; INFO adds one access line per request (``kitchen.serve.access``)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kitchen.serve").setLevel(level)
    # uvicorn's own loggers: errors only (our access log replaces theirs)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
