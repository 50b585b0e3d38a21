"""Which API key owns what, when ``kitchen serve`` has several (``--api-key-file``).

Why: with one key every client sees every session, model, checkpoint and export. With
several keys each is an *owner*: a session belongs to the key that created it, and
everything named after the session (its models ``<session>:train:N``, their runs,
checkpoints and exports ``tinker://<model>/...``, its samplers ``<session>:sample:...``)
belongs to the same key; a future belongs to the key whose request made it. Another
key gets a 404, the same answer as for something that does not exist, so it learns
nothing. With one key nothing here runs (the per-call cost is unchanged).

The owner of a request travels in a context variable set for the duration of the
endpoint call (:func:`acting_as`), so the state records it where it creates things
(sessions, run.json, futures) without every endpoint passing it along. An owner is a
hash of the key, never the key.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from typing import Any, Iterator, Mapping

from kitchen.serve.errors import RequestError

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("kitchen_serve_owner", default=None)

# request fields that name something a key may own (body, path parameters)
_ID_FIELDS = ("session_id", "model_id", "sampling_session_id", "model_path", "path", "tinker_path", "run_id", "sampler_id")


def owner_of_key(key: bytes) -> str:
    return "key-" + hashlib.sha256(key).hexdigest()[:16]


def current_owner() -> str | None:
    """The owner of the request being handled (None with a single key, or outside a request)."""
    return _current.get()


@contextlib.contextmanager
def acting_as(owner: str | None) -> Iterator[None]:
    token = _current.set(owner)
    try:
        yield
    finally:
        _current.reset(token)


def session_of(ident: str) -> tuple[str, str]:
    """(session id, run id) that an id or tinker:// path is named after."""
    rest = ident[len("tinker://"):] if ident.startswith("tinker://") else ident
    run = rest.split("/", 1)[0]
    return run.split(":", 1)[0], run


def _named(body: Any, params: Mapping[str, str]) -> list[str]:
    found = [v for k, v in params.items() if k in _ID_FIELDS and isinstance(v, str)]
    if isinstance(body, dict):
        found += [body[k] for k in _ID_FIELDS if isinstance(body.get(k), str) and body[k]]
    elif isinstance(body, (bytes, bytearray)) and body:
        from tinker.proto import tinker_public_pb2 as pb

        msg = pb.ForwardBackwardRequest()
        try:
            msg.ParseFromString(bytes(body))
            found.append(msg.model_id)
        except Exception:  # noqa: BLE001 - the endpoint answers the bad protobuf
            pass
    return found


def check_access(state: Any, owner: str, body: Any, params: Mapping[str, str]) -> None:
    """404 when the request names a session, model, run, path or future another key owns."""
    for ident in _named(body, params):
        if ident.startswith("tinker://") or ":" in ident or ident.startswith("kitchen-"):
            session, run = session_of(ident)
            found = state.owner_of(session, run)
            if found is not None and found != owner:
                raise RequestError(404, f"{ident!r} not found on this server")
    rid = body.get("request_id") if isinstance(body, dict) else None
    if isinstance(rid, str):
        rec_owner = state.futures.owner_of(rid)
        if rec_owner is not None and rec_owner != owner:
            raise RequestError(404, f"unknown request_id {rid!r}")
