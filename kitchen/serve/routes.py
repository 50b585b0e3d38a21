"""The route table of ``kitchen serve``, built once when the server starts.

A route is a method, a path under ``/api/v1/`` (literal, or a pattern with named
groups for its parameters) and a handler that takes a :class:`Call`. Literal routes
are one dict lookup; patterns are tried in the order they were added. Refusals (the
Tinker endpoints kitchen serve does not offer) answer a 400 naming what to use instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from kitchen.serve.errors import RequestError

API_PREFIX = "/api/v1/"


@dataclass(frozen=True)
class Call:
    """One request as an endpoint sees it (the body is read after routing, so it comes last)."""

    body: Any
    query: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)  # the path's named groups
    base_url: str = ""  # the server's address as the client reached it
    method: str = "GET"


Handler = Callable[[Call], Any]


@dataclass(frozen=True)
class _Pattern:
    methods: frozenset[str] | None  # None = any method (a refusal)
    regex: re.Pattern[str]
    endpoint: str
    handler: Handler | None
    refusal: tuple[int, str] | None = None


class Router:
    def __init__(self) -> None:
        self._literal: dict[tuple[str, str], tuple[Handler, str]] = {}
        self._refused: dict[str, str] = {}
        self._patterns: list[_Pattern] = []

    def add(self, method: str, path: str, handler: Handler, endpoint: str | None = None) -> None:
        """A literal route (``path`` relative to /api/v1/); ``endpoint`` names it in metrics, faults and logs."""
        self._literal[(method, path)] = (handler, endpoint or path.replace("/", "_"))

    def add_pattern(self, methods: tuple[str, ...], pattern: str, handler: Handler, endpoint: str) -> None:
        self._patterns.append(_Pattern(frozenset(methods), re.compile(pattern), endpoint, handler))

    def refuse(self, path: str, message: str) -> None:
        """Any method on exactly ``path`` is a 400 with ``message``."""
        self._refused[path] = message

    def refuse_pattern(self, pattern: str, message: Callable[[str, str], str] | str) -> None:
        """Any method on a path matching ``pattern`` (checked in order with the patterns) is a 400."""
        self._patterns.append(_Pattern(None, re.compile(pattern), "", None, (400, message)))  # type: ignore[arg-type]

    def resolve(self, method: str, path: str) -> tuple[Handler, str, dict[str, str]]:
        """(handler, endpoint name, path parameters), or a RequestError (400/404 with a message)."""
        path = path.split("?", 1)[0].rstrip("/")
        if not path.startswith(API_PREFIX):
            raise RequestError(404, f"no such endpoint: {method} {path} (the Tinker API lives under /api/v1/)")
        name = path[len(API_PREFIX):]
        refused = self._refused.get(name)
        if refused is not None:
            raise RequestError(400, refused)
        found = self._literal.get((method, name))
        if found is not None:
            return found[0], found[1], {}
        for p in self._patterns:
            m = p.regex.fullmatch(name)
            if m is None:
                continue
            if p.refusal is not None:
                msg = p.refusal[1]
                raise RequestError(p.refusal[0], msg(method, path) if callable(msg) else msg)
            if method in p.methods:  # type: ignore[operator]
                return p.handler, p.endpoint, m.groupdict()  # type: ignore[return-value]
        raise RequestError(404, f"no such endpoint: {method} {path} (kitchen serve implements the Tinker training, "
                                "sampling and checkpoint API)")
