"""A work queue that takes turns between clients (round robin), for the sampling worker.

Why: sampling requests from every client went through one first-in-first-out queue,
so a client that queued 500 samples (an RL loop sampling a whole batch at once) made
every other client wait behind all 500. Here each client has its own FIFO and the
worker takes one item from each client with work waiting, in turn: a client that sends
one request waits for at most one item per other client, however many they queued.
Within one client the order is unchanged.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: "OrderedDict[str, deque[T]]" = OrderedDict()  # clients with work, next turn first
        self._closed = False

    def put(self, client: str, item: T) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("queue is closed")
            q = self._queues.get(client)
            if q is None:
                q = self._queues[client] = deque()  # a client new to the queue takes its turn after the others
            q.append(item)
            self._cond.notify()

    def get(self) -> T | None:
        """The next item, blocking; None once the queue is closed and drained."""
        with self._cond:
            while not self._queues:
                if self._closed:
                    return None
                self._cond.wait()
            client, q = next(iter(self._queues.items()))
            item = q.popleft()
            if q:
                self._queues.move_to_end(client)
            else:
                del self._queues[client]
            return item

    def drain(self) -> list[T]:
        """Take every queued item at once (oldest turn first); the queue stays open."""
        with self._cond:
            items = [item for q in self._queues.values() for item in q]
            self._queues.clear()
            return items

    def close(self) -> None:
        """No more puts; ``get`` drains what is queued, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())
