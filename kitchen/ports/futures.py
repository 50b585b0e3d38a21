"""Futures that are already done: how a synchronous backend answers the async port.

The training and sampling ports return ``concurrent.futures.Future`` so that remote
backends can pipeline. A backend that computes on the caller's thread (noop, the local
engine's cheap calls) hands back a future that is already resolved or already failed,
and the caller's ``.result()`` code stays the same for both.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def resolved(value: T) -> Future[T]:
    """A future whose ``.result()`` is ``value``."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


def failed(exc: BaseException) -> Future:
    """A future whose ``.result()`` raises ``exc``."""
    future: Future = Future()
    future.set_exception(exc)
    return future
