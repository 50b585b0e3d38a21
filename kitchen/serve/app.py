"""``kitchen serve``: a Tinker-compatible HTTP server backed by kitchen TrainingClients.

It implements the slice of the Tinker REST API (``/api/v1/...``) that the official
``tinker`` SDK uses for LoRA training, sampling, checkpoints and training-run
metadata, so unmodified SDK code - and the kitchen's own ``TinkerTrainingClient`` -
can train against a local model.

Wire format (as the SDK 0.38 speaks it): JSON everywhere except ``forward_backward``,
whose request body is protobuf (``tinker_public_pb2.ForwardBackwardRequest``, zstd
decoded when ``Content-Encoding: zstd``), and the results of forward/forward_backward
and sampling, which ``retrieve_future`` returns as protobuf
(``ForwardBackwardOutput`` / ``SampleResponse``). Auth is the ``X-API-Key`` header.

This module is the application object (:class:`TinkerApp`: the key check and the route
table, built once); the endpoints are :mod:`kitchen.serve.endpoints` by group, the
guarded HTTP layer (Starlette) :mod:`kitchen.serve.http`, the process (uvicorn,
signals) :mod:`kitchen.serve.server`, server state :mod:`kitchen.serve.state`.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
from typing import Any, Callable

from kitchen.serve.endpoints import ServeContext, build_router
from kitchen.serve.errors import RequestError
from kitchen.serve.external import ExternalWeights
from kitchen.serve.faults import FaultPlan
from kitchen.serve.model_names import served_models
from kitchen.serve.ownership import acting_as, check_access, owner_of_key
from kitchen.serve.private_files import API_KEY_FILE, signing_secret, write_private
from kitchen.serve.routes import Call
from kitchen.serve.state import ServerState

KEY_ENV_VARS = ("KITCHEN_SERVE_API_KEY", "TINKER_API_KEY")


class TinkerApp:
    """The key check and the route table, independent of the HTTP plumbing (see :mod:`kitchen.serve.http`)."""

    def __init__(self, state: ServerState, api_key: str, faults: FaultPlan, stall_s: float = 30.0,
                 models: list[str] | None = None, more_keys: list[str] | None = None) -> None:
        self.state = state
        self._api_key = api_key.encode()
        # several keys (--api-key-file): each is an owner (kitchen.serve.ownership); one key: no ownership checks
        keys = [self._api_key, *(k.encode() for k in (more_keys or []) if k.encode() != self._api_key)]
        self._owners = [(k, owner_of_key(k)) for k in keys] if len(keys) > 1 else []
        self.faults = faults
        self.stall_s = stall_s
        self.models = served_models(state.backend, models)
        self.external = ExternalWeights(state.root, signing_secret(state.root))
        self.context = ServeContext(state, self.external, self.models)
        self.router = build_router(self.context)

    def __repr__(self) -> str:  # never show the key
        return f"TinkerApp(backend={self.state.backend!r})"

    def check_key(self, presented: str | None) -> str | None:
        """The key's owner id (None with a single key), or a 401."""
        if not presented:
            raise RequestError(401, "missing API key: send it in the X-API-Key header (the Tinker SDK sends $TINKER_API_KEY)")
        given = presented.encode()
        if not self._owners:
            if hmac.compare_digest(given, self._api_key):
                return None
        else:
            found = None
            for key, owner in self._owners:  # every key compared: the time does not say which matched
                if hmac.compare_digest(given, key):
                    found = owner
            if found is not None:
                return found
        raise RequestError(401, "invalid API key: set TINKER_API_KEY in the client to the key this kitchen server was started with")

    def route(self, method: str, path: str, query: dict[str, str] | None = None,
              base_url: str = "", owner: str | None = None) -> tuple[Callable[[Any], Any], str]:
        """(handler of the body, endpoint name for metrics/faults/logs), or a RequestError (404/400 with a message).

        ``base_url`` is the server's address as the client reached it (the download URLs
        of external weights are built on it).
        """
        handler, endpoint, params = self.router.resolve(method, path)
        q = query or {}
        base_url = self.context.public_url or base_url  # the server's, never the request's Host header

        if owner is None:
            def call(body: Any) -> Any:
                return handler(Call(body=body, query=q, params=params, base_url=base_url, method=method))
        else:
            def call(body: Any) -> Any:
                with acting_as(owner):
                    check_access(self.state, owner, body, params)
                    return handler(Call(body=body, query=q, params=params, base_url=base_url, method=method))

        return call, endpoint


def resolve_api_key(api_key: str | None = None, env_var: str | None = None) -> tuple[str, bool]:
    """(key, generated): the given key, else the env (``env_var`` or KITCHEN_SERVE_API_KEY /
    TINKER_API_KEY), else a fresh random one."""
    if api_key:
        return api_key, False
    for name in ((env_var,) if env_var else KEY_ENV_VARS):
        value = os.environ.get(name or "")
        if value:
            return value, False
    return "tml-kitchen-" + secrets.token_urlsafe(24), True


def build_app(opts: Any, api_key: str | None = None) -> TinkerApp:
    """The application for validated :class:`~kitchen.serve.options.ServeOptions`."""
    more_keys = read_key_file(opts.api_key_file) if getattr(opts, "api_key_file", None) else []
    key, generated = (more_keys[0], False) if more_keys and not api_key else resolve_api_key(api_key, opts.api_key_env)
    if not generated and not key.startswith(("tml-", "eyJ")):
        print("kitchen serve: warning: the Tinker SDK only sends keys that start with 'tml-'", file=sys.stderr, flush=True)
    plan = FaultPlan.parse(opts.faults if opts.faults is not None else os.environ.get("KITCHEN_SERVE_FAULTS"))
    stall_s = opts.stall_s if opts.stall_s is not None else float(os.environ.get("KITCHEN_SERVE_STALL_S", "30"))
    from kitchen.serve.state import WorkLimits

    limits = WorkLimits(max_sample_tokens_per_request=opts.max_sample_tokens_per_request,
                        max_sample_tokens_in_flight=opts.max_sample_tokens_in_flight, result_ttl_s=opts.result_ttl_s,
                        max_models_per_session=opts.max_models_per_session, max_models=opts.max_models)
    state = ServerState(backend=opts.backend, latency_ms=opts.latency_ms, state_dir=opts.state_dir,
                        max_loaded_samplers=opts.max_loaded_samplers, precision=opts.precision, limits=limits)
    if generated:
        # to a 0600 file, not the log: logs are collected, shipped and read by others
        key_file = state.root / API_KEY_FILE
        write_private(key_file, (key + "\n").encode())
        print(f"kitchen serve: no API key in KITCHEN_SERVE_API_KEY or TINKER_API_KEY; generated one for this run and "
              f"wrote it to {key_file} (readable by this user only):\n  export TINKER_API_KEY=$(cat {key_file})",
              file=sys.stderr, flush=True)
    return TinkerApp(state, key, plan, stall_s=stall_s, models=opts.models, more_keys=more_keys)


def read_key_file(path: str) -> list[str]:
    """The keys of ``--api-key-file``: one per line; blank lines and lines starting with # skipped."""
    from pathlib import Path

    lines = Path(path).expanduser().read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
