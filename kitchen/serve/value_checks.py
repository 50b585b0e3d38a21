"""Value checks at the wire: every number a request carries is checked before it reaches a model.

Why: the request types accept any float, and JSON carries ``NaN`` and ``Infinity``, so
``temperature=NaN`` reached the sampler (a torch error, or silent garbage), ``lr=inf``
turned a model's weights into NaN for good, and a negative token id indexed the
embedding from its end. Each check here raises a 400 that names the field, the value
and what is allowed; the endpoints call them on the HTTP thread, before queueing.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from kitchen.serve.errors import RequestError


def _finite(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise RequestError(400, f"{name} must be a finite number, got {value!r}")
    return x


def check_sampling(temperature: Any, top_p: Any, top_k: Any) -> None:
    t = _finite("sampling_params.temperature", temperature)
    if t < 0:
        raise RequestError(400, f"sampling_params.temperature must be >= 0 (0 = greedy), got {t:g}")
    p = _finite("sampling_params.top_p", top_p)
    if not 0 < p <= 1:
        raise RequestError(400, f"sampling_params.top_p must be in (0, 1], got {p:g}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1:
        raise RequestError(400, f"sampling_params.top_k must be an integer >= -1 (-1 = no limit), got {top_k!r}")


def check_token_ids(name: str, tokens: Sequence[int], vocab_size: int | None) -> None:
    """Token ids are 0 .. vocab_size - 1 (only the lower bound when the vocabulary is not known yet)."""
    if not len(tokens):
        return
    lo, hi = min(tokens), max(tokens)
    if lo < 0:
        raise RequestError(400, f"{name} has token id {lo}; token ids are >= 0")
    if vocab_size is not None and hi >= vocab_size:
        raise RequestError(400, f"{name} has token id {hi}, outside this model's vocabulary of {vocab_size} "
                                f"(ids 0-{vocab_size - 1})")


def check_adam(learning_rate: Any, beta1: Any, beta2: Any, eps: Any, weight_decay: Any, grad_clip_norm: Any) -> None:
    lr = _finite("adam_params.learning_rate", learning_rate)
    if lr < 0:
        raise RequestError(400, f"adam_params.learning_rate must be >= 0, got {lr:g}")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        x = _finite(f"adam_params.{name}", b)
        if not 0 <= x < 1:
            raise RequestError(400, f"adam_params.{name} must be in [0, 1), got {x:g}")
    e = _finite("adam_params.eps", eps)
    if e <= 0:
        raise RequestError(400, f"adam_params.eps must be > 0, got {e:g}")
    for name, v in (("weight_decay", weight_decay), ("grad_clip_norm", grad_clip_norm)):
        x = _finite(f"adam_params.{name}", v)
        if x < 0:
            raise RequestError(400, f"adam_params.{name} must be >= 0 (0 = off), got {x:g}")
