"""How much sampling work a request, and the whole server, may ask for at once.

Why: one ``asample`` with ``num_samples=1024`` and ``max_tokens=65536`` was accepted,
and asks the sampling thread for 67 million tokens: hours of work that every other
client waits behind, and a KV cache no machine holds. The cost of a request is counted
as ``num_samples x (prompt tokens + max_tokens)`` (the tokens its sequences can reach),
checked against two budgets before anything is queued:

- per request (``--max-sample-tokens-per-request``): over it is a 400 whose message
  names the limit and the flag; the client has to ask for less;
- in flight (``--max-sample-tokens-in-flight``, queued + running): over it is a 429
  with ``Retry-After``; the same request succeeds once others finish.

A request's tokens are released when its work finishes, fails or is cancelled.
"""

from __future__ import annotations

import threading

from kitchen.serve.errors import RequestError


def sample_cost(num_samples: int, prompt_tokens: int, max_tokens: int) -> int:
    return int(num_samples) * (int(prompt_tokens) + int(max_tokens))


class SampleBudget:
    def __init__(self, per_request: int, in_flight: int) -> None:
        self.per_request = int(per_request)
        self.in_flight = int(in_flight)
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, num_samples: int, prompt_tokens: int, max_tokens: int) -> int:
        """Take this request's tokens from the budget (returns them, to :meth:`release`), or a 400/429."""
        cost = sample_cost(num_samples, prompt_tokens, max_tokens)
        if cost > self.per_request:
            raise RequestError(400, f"sampling request too large: num_samples {num_samples} x (prompt {prompt_tokens} + "
                                    f"max_tokens {max_tokens}) = {cost} tokens, over this server's limit of "
                                    f"{self.per_request} tokens per request (kitchen serve --max-sample-tokens-per-request); "
                                    "ask for fewer samples or fewer tokens, or split the request")
        with self._lock:
            if self._used + cost > self.in_flight:
                raise RequestError(429, f"sampling is at capacity: {self._used} tokens in flight, and this request's "
                                        f"{cost} would pass the limit of {self.in_flight} "
                                        "(kitchen serve --max-sample-tokens-in-flight); retry shortly")
            self._used += cost
        return cost

    def release(self, cost: int) -> None:
        with self._lock:
            self._used = max(0, self._used - int(cost))
