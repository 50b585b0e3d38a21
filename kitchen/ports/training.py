"""Training and sampling ports: the contract every training backend implements.

Futures are ``concurrent.futures.Future``. A backend that computes synchronously
returns an already-resolved future; a remote backend returns one that resolves later,
which is what lets the supervised workflow keep several steps in flight.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Protocol, Sequence, runtime_checkable

from kitchen.ports.types import (
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
    SampleResult,
    SamplingParams,
    SessionConfig,
)


@runtime_checkable
class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the kitchen relies on."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@runtime_checkable
class SamplingClient(Protocol):
    def sample(self, prompt: list[int], num_samples: int, params: SamplingParams) -> Future[SampleResult]:
        """Sample ``num_samples`` continuations of ``prompt`` with per-token logprobs."""
        ...

    def compute_logprobs(self, tokens: list[int]) -> Future[list[float | None]]:
        """Logprob of each token given its prefix; the first entry is None."""
        ...


@runtime_checkable
class TrainingClient(Protocol):
    def start_session(self, config: SessionConfig) -> dict[str, Any]:
        """Load the base model and make it trainable. Returns facts (params, device...)."""
        ...

    def get_tokenizer(self) -> Tokenizer: ...

    def forward(self, data: list[Datum], loss_fn: str = "cross_entropy") -> Future[ForwardBackwardResult]:
        """Loss and logprobs without gradients (evaluation)."""
        ...

    def forward_backward(
        self, data: list[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future[ForwardBackwardResult]:
        """Accumulate gradients of ``loss_fn`` over ``data``."""
        ...

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        """Apply the accumulated gradients, then zero them."""
        ...

    def save_state(self, name: str, step: int) -> CheckpointRef:
        """Save trainable weights, optimizer and RNG state so training resumes exactly."""
        ...

    def load_state(self, ref: CheckpointRef, with_optimizer: bool = True) -> None: ...

    def save_weights(self, path: str) -> str:
        """Write final weights a user can load without the kitchen; returns where."""
        ...

    def sampling_client(self, base_model: str | None = None) -> SamplingClient:
        """A frozen sampler.

        With no argument: over a snapshot of the current trained weights (Tinker:
        ``save_weights_for_sampler`` then ``create_sampling_client``); later training
        does not change it. With ``base_model``: over that untouched model (a name, a
        path, or a run dir's final weights), e.g. the session's own base model as the
        DPO reference or another model as a distillation teacher.
        """
        ...

    def close(self) -> None: ...
