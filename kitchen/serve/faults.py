"""Fault injection for ``kitchen serve``: make chosen endpoints fail or stall on purpose.

A spec is a comma-separated list of ``ENDPOINT:KIND:COUNT`` rules, e.g.
``forward_backward:503:2,optim_step:stall:1``:

* ``ENDPOINT`` is the last path segment of the REST call (``forward_backward``,
  ``optim_step``, ``asample``, ``retrieve_future``, ``create_model``...) or ``*`` for all.
* ``KIND`` is an HTTP status code (``503``, ``500``, ``429``, ``401``...) answered instead
  of doing the work, or ``stall``: hold the request without answering for ``stall_s``
  seconds (longer than the client's timeout), then drop the connection. Neither runs
  the request, so a client retry is always safe.
* ``COUNT`` is how many matching calls misbehave (the first COUNT); ``*`` means all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


class FaultSpecError(ValueError):
    pass


@dataclass
class FaultRule:
    endpoint: str
    kind: str  # "stall" or a status code as text
    remaining: int | None  # None = forever

    @property
    def status(self) -> int | None:
        return None if self.kind == "stall" else int(self.kind)


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def parse(cls, spec: str | None) -> "FaultPlan":
        rules: list[FaultRule] = []
        for part in (spec or "").split(","):
            part = part.strip()
            if not part:
                continue
            bits = part.split(":")
            if len(bits) not in (2, 3):
                raise FaultSpecError(
                    f"bad fault rule {part!r}: expected ENDPOINT:KIND:COUNT, e.g. forward_backward:503:2 or optim_step:stall:1"
                )
            endpoint, kind = bits[0].strip(), bits[1].strip().lower()
            count_text = bits[2].strip() if len(bits) == 3 else "1"
            if kind != "stall" and not (kind.isdigit() and 400 <= int(kind) <= 599):
                raise FaultSpecError(f"bad fault kind {kind!r} in {part!r}: use an HTTP status 400-599 or 'stall'")
            if count_text == "*":
                remaining = None
            elif count_text.isdigit():
                remaining = int(count_text)
            else:
                raise FaultSpecError(f"bad fault count {count_text!r} in {part!r}: use a number or '*'")
            rules.append(FaultRule(endpoint, kind, remaining))
        return cls(rules)

    def take(self, endpoint: str) -> FaultRule | None:
        """The rule that fires for this call (consuming one of its count), or None."""
        with self._lock:
            for rule in self.rules:
                if rule.endpoint not in (endpoint, "*"):
                    continue
                if rule.remaining is None:
                    return rule
                if rule.remaining > 0:
                    rule.remaining -= 1
                    return rule
        return None

    def __bool__(self) -> bool:
        return bool(self.rules)
