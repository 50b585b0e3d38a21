"""Keeping credentials out of files: the one place that says what a secret is and hides it.

Mapping keys that name a secret (``api_key``, ``token``...) are found by
:func:`is_secret_key` and their values hidden by :func:`redact` (config.yaml, run.json,
every event). Two other places carry secrets without such a key, and this module covers
them too:

* URLs: ``http://user:SECRET@host/`` and ``https://host/?token=SECRET``. A base_url
  given as an override or in ``TINKER_BASE_URL`` ends up in config.yaml, checkpoint
  pointers and run.json unless every writer passes it through :func:`redact_url`.
* The command line recorded in run.json: ``api_key=...`` must be hidden, while
  ``max_tokens=32`` must stay (it is how the run was made). Arguments are judged by
  their key as a whole word (:func:`is_secret_key`), never by
  a substring of the argument.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

REDACTED = "***"

# scheme://[userinfo@]host... up to whitespace or a quote; found anywhere inside a string.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


# A key is secret when one of its words (split on non-alphanumerics and camelCase) is one of
# these, or when it contains one of the compound forms. Word matching keeps ``tokens``,
# ``tokens_per_s``, ``max_tokens`` and ``tokenizer`` visible while ``token``, ``hf_token``,
# ``accessToken`` are hidden.
_SECRET_WORDS = frozenset({
    "token", "secret", "secrets", "password", "passwd", "authorization", "apikey",
    "credential", "credentials", "cookie",
})
_SECRET_COMPOUNDS = ("api_key", "apikey", "access_key", "private_key", "secret", "password")
_WORD_SPLIT = re.compile(r"[^0-9a-zA-Z]+|(?<=[a-z0-9])(?=[A-Z])")
_secret_key_cache: dict[str, bool] = {}


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret (case-insensitive; cached per key)."""
    if not isinstance(key, str):
        return False
    hit = _secret_key_cache.get(key)
    if hit is None:
        low = key.lower()
        compact = low.replace("-", "_")
        words = {w.lower() for w in _WORD_SPLIT.split(key) if w}
        hit = bool(words & _SECRET_WORDS) or any(c in compact for c in _SECRET_COMPOUNDS)
        if len(_secret_key_cache) < 4096:
            _secret_key_cache[key] = hit
    return hit


def _hide(value: Any) -> bool:
    # None stays visible ("no token configured" is useful); numbers are counts, not secrets
    # (``token_count: 12``); everything else under a secret key is hidden, containers included.
    return value is not None and not isinstance(value, (bool, int, float))


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with the values of secret-looking keys replaced by ``"***"``.

    Walks nested mappings and lists/tuples (tuples come back as lists). Secret keys are
    matched case-insensitively on words: ``api_key``, ``apiKey``, ``token``, ``hf_token``,
    ``secret``, ``client_secret``, ``password``, ``authorization``, ``access_key``,
    ``private_key``, ``credentials``... but not ``tokens`` / ``tokens_per_s`` /
    ``tokenizer``. A ``None`` or numeric value under a secret key is kept (it reveals
    nothing). Containers are always copied; the input is never modified.
    """
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(k) and _hide(v) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_url(obj)  # credentials inside URLs (user:pass@host, ?token=...)
    return obj


# Payload keys of the engine's conventions whose values are scalars: a payload made only of
# these needs no redaction walk (one C-level subset test for stage.* and plain steps).
# Only keys that never hold a mapping (``model`` or ``error`` might, so they take the walk).
_SCALAR_KEYS = frozenset({
    "stage", "path", "step", "duration_s", "total_steps", "epoch", "loss", "lr", "tokens",
    "tokens_per_s", "elapsed_s", "grad_norm", "split",
})


_ATOMS = frozenset({str, int, float, bool, type(None)})
_NUMERIC = frozenset({int, float, bool, type(None)})


def redact_fast(obj: Any) -> Any:
    """Like :func:`redact` but returns ``obj`` itself when nothing needs hiding (hot path)."""
    if isinstance(obj, dict):
        if obj.keys() <= _SCALAR_KEYS:
            return obj
        out = None
        for k, v in obj.items():
            if type(v) in _NUMERIC:  # numbers are never hidden, even under a secret-looking key
                continue
            if is_secret_key(k) and _hide(v):
                new = REDACTED
            elif type(v) is str:
                if "://" not in v:
                    continue
                new = redact_url(v)  # credentials inside URLs
            elif type(v) in _ATOMS:
                continue
            elif isinstance(v, (dict, list, tuple, Mapping)):
                new = redact_fast(v)
            else:
                continue
            if new is not v:
                if out is None:
                    out = dict(obj)
                out[k] = new
        return obj if out is None else out
    if type(obj) is str:
        return redact_url(obj) if "://" in obj else obj
    if isinstance(obj, (list, tuple)):
        items = [redact_fast(v) for v in obj]
        if any(a is not b for a, b in zip(items, obj)):
            return items
        return obj
    if isinstance(obj, Mapping):  # OmegaConf and friends: take the general path
        return redact(obj)
    return obj


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
        if any(is_secret_key(k) or k.lower() in ("sig", "signature", "key", "auth", "code") for k, _ in pairs):
            query = "&".join(
                f"{quote(k, safe='')}={REDACTED if (is_secret_key(k) or k.lower() in ('sig', 'signature', 'key', 'auth', 'code')) else quote(v, safe='')}"
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


# Credentials in free text (a log line, a server's error message) that carry no key of
# their own: ``Bearer X``, ``api_key=X``, ``x-api-key: X``.
_BEARER = re.compile(r"(?i)(bearer\s+|api[_-]?key[=:]\s*|x-api-key['\"]?:\s*['\"]?)[^\s'\",]+")


def redact_text(text: str, known: Iterable[str | None] = ()) -> str:
    """Free text with its credentials replaced by ``***``.

    Hidden: URL credentials (:func:`redact_url`), bearer tokens and ``api_key=``/
    ``x-api-key:`` values, and every occurrence of a ``known`` secret value (e.g. the API
    key the process holds; values of 4 characters or fewer are left alone, they would
    mask ordinary words).
    """
    for value in known:
        if value and len(value) > 4:
            text = text.replace(value, REDACTED)
    return _BEARER.sub(r"\1" + REDACTED, redact_url(text))


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
            if is_secret_key(name):
                if eq:
                    out.append(f"--{name}={REDACTED}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
            out.append(redact_url(arg))
            continue
        key, eq, _value = arg.partition("=")
        if eq and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]):
            out.append(f"{key}={REDACTED}")
            continue
        out.append(redact_url(arg))
    return out


__all__ = ["REDACTED", "is_secret_key", "redact", "redact_argv", "redact_fast", "redact_text", "redact_url",
           "redact_urls"]
