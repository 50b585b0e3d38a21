"""Keeping credentials out of files: URLs and command lines.

Mapping keys that name a secret (``api_key``, ``token``...) are handled by
:func:`kitchen.telemetry.jsonl.redact`. Two other places carry secrets without such a
key, and this module covers them:

* URLs: ``http://user:SECRET@host/`` and ``https://host/?token=SECRET``. A base_url
  given as an override or in ``TINKER_BASE_URL`` ends up in config.yaml, checkpoint
  pointers and run.json unless every writer passes it through :func:`redact_url`.
* The command line recorded in run.json: ``api_key=...`` must be hidden, while
  ``max_tokens=32`` must stay (it is how the run was made). Arguments are judged by
  their key as a whole word (:func:`kitchen.telemetry.jsonl.is_secret_key`), never by
  a substring of the argument.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

REDACTED = "***"

# scheme://[userinfo@]host... up to whitespace or a quote; found anywhere inside a string.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def _is_secret(key: str) -> bool:
    from kitchen.telemetry.jsonl import is_secret_key

    return is_secret_key(key)


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    changed = False
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        # user:password -> user:***; a lone userinfo (a token used as the user name) -> ***
        netloc = f"{user}:{REDACTED}@{hostport}" if sep else f"{REDACTED}@{hostport}"
        changed = True
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret(k) or k.lower() in ("sig", "signature", "key", "auth", "code") for k, _ in pairs):
            query = "&".join(
                f"{quote(k, safe='')}={REDACTED if (_is_secret(k) or k.lower() in ('sig', 'signature', 'key', 'auth', 'code')) else quote(v, safe='')}"
                for k, v in pairs
            )
            changed = True
    if not changed:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    Userinfo (``user:pass@`` -> ``user:***@``, ``token@`` -> ``***@``) and query
    parameters with secret-looking names (``token``, ``api_key``, ``sig``...) are hidden;
    the scheme, host, port and path stay, so the URL still says where the run talked to.
    """
    if "://" not in text:
        return text
    return _URL.sub(lambda m: _redact_one(m.group(0)), text)


def redact_urls(obj: Any) -> Any:
    """A copy of ``obj`` (mappings, lists, strings) with :func:`redact_url` applied to every string."""
    if isinstance(obj, str):
        return redact_url(obj)
    if isinstance(obj, Mapping):
        return {k: redact_urls(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_urls(v) for v in obj]
    return obj


def redact_argv(argv: Iterable[str]) -> list[str]:
    """The command line with secret values replaced by ``***``, every other argument kept.

    ``api_key=X``, ``+adapters.training.token=X`` and ``--password X`` / ``--password=X``
    hide X; ``max_tokens=64`` and ``tokenizer=...`` are kept whole. URLs in any argument
    lose their credentials.
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("--"):
            name, eq, _value = arg[2:].partition("=")
            if _is_secret(name):
                if eq:
                    out.append(f"--{name}={REDACTED}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
            out.append(redact_url(arg))
            continue
        key, eq, _value = arg.partition("=")
        if eq and _is_secret(key.lstrip("+~").rsplit(".", 1)[-1]):
            out.append(f"{key}={REDACTED}")
            continue
        out.append(redact_url(arg))
    return out


__all__ = ["REDACTED", "redact_argv", "redact_url", "redact_urls"]
