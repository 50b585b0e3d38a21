"""SDK chatter goes to ``RUN_DIR/debug.log``, never to the console.

The Tinker SDK and kitchen's own Tinker adapter log retries, queue waits and telemetry
hiccups through :mod:`logging`. With no handler configured, Python prints every warning
to stderr, right through the progress bar. :class:`SdkLogRouter` is a sink-shaped object
(the bus closes it with the run) that, for the run's lifetime, sends those loggers to
``debug.log`` in the run dir instead and stops them propagating to the console.

Levels: ``kitchen.tinker`` from DEBUG (kitchen's retry notes), ``tinker`` and ``httpx``
from INFO: the SDK's DEBUG records dump whole request bodies (training batches), which are
large and have no place in a log. Credentials in URLs (``https://user:pass@host``) and
bearer tokens are masked on the way (:func:`kitchen.io.secrets.redact_text`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from kitchen.io.secrets import redact_text
from kitchen.telemetry.events import Event

DEBUG_LOG = "debug.log"
ROUTED = {"kitchen.tinker": logging.DEBUG, "tinker": logging.INFO, "httpx": logging.INFO}


class _Mask(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = redact_text(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


class SdkLogRouter:
    def __init__(self, run_dir: str | Path) -> None:
        self.handler = logging.FileHandler(Path(run_dir) / DEBUG_LOG, delay=True, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self.handler.addFilter(_Mask())
        self._saved: dict[str, tuple[bool, int]] = {}
        for name, level in ROUTED.items():
            logger = logging.getLogger(name)
            self._saved[name] = (logger.propagate, logger.level)
            logger.addHandler(self.handler)
            logger.propagate = False
            logger.setLevel(level)

    def handle(self, event: Event) -> None:  # events are not its business
        return None

    def close(self) -> None:
        for name, (propagate, level) in self._saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self.handler)
            logger.propagate, _ = propagate, logger.setLevel(level)
        self._saved.clear()
        self.handler.close()
