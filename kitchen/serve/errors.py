"""What the server's lower modules share without importing each other.

``RequestError`` is answered as an HTTP error with a JSON message by whichever endpoint
raised it. ``START_LOCK`` serialises session starts: starting a kitchen session reseeds
the process-wide RNG, so the model workers (``state``) and the sampler snapshots
(``snapshots``) must never start one at the same time. Both live here so that neither of
those modules imports the other for them.
"""

from __future__ import annotations

import threading


class RequestError(Exception):
    """Answered as an HTTP error with a JSON message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


START_LOCK = threading.Lock()
