"""A training backend that trains nothing but behaves like one.

The loss falls smoothly with the number of optimizer steps (faster for larger learning
rates) plus seeded noise, so workflows, telemetry, sweeps and resume can be exercised
in milliseconds. State round-trips through save_state/load_state, so resume is exact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Sequence, TypeVar

from kitchen.io.atomic import atomic_publish_dir, temp_sibling
from kitchen.ports.futures import resolved
from kitchen.ports.types import (
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
    SampledSequence,
    SampleResult,
    SamplingParams,
    SessionConfig,
    require_optimizer,
)

T = TypeVar("T")


class ByteTokenizer:
    """UTF-8 bytes as tokens (0-255) plus an end-of-sequence token 256. No chat template."""

    eos_token_id = 256
    pad_token_id = 256
    name_or_path = "noop-bytes"
    vocab_size = 257
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


def _noise(seed: int, *keys: int) -> float:
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 - 0.5


class NoopSamplingClient:
    """Returns seeded pseudo-random byte completions with plausible logprobs."""

    def __init__(self, seed: int = 0, version: int = 0) -> None:
        self.seed = seed
        self.version = version

    def sample(self, prompt: list[int], num_samples: int, params: SamplingParams) -> Future[SampleResult]:
        seed = params.seed if params.seed is not None else self.seed
        digest = hashlib.blake2b(repr((seed, self.version, tuple(prompt))).encode(), digest_size=8).digest()
        rng = random.Random(int.from_bytes(digest, "little"))
        sequences = []
        for _ in range(num_samples):
            n = rng.randint(1, max(1, params.max_tokens))
            tokens = [rng.choice(b"0123456789 abcdefghij") for _ in range(n)]
            logprobs = [-rng.uniform(0.1, 3.0) for _ in tokens]
            sequences.append(SampledSequence(tokens, logprobs, "stop" if n < params.max_tokens else "length"))
        return resolved(SampleResult(sequences))

    def compute_logprobs(self, tokens: list[int]) -> Future[list[float | None]]:
        out: list[float | None] = [None]
        out += [-1.0 - 0.5 * abs(_noise(self.seed, self.version, i, t)) for i, t in enumerate(tokens[1:])]
        return resolved(out)


class NoopTrainingClient:
    """Implements TrainingClient with arithmetic instead of a model."""

    def __init__(self, decay: float = 0.02, initial_loss: float = 2.5, floor: float = 0.3, nan_at_step: int | None = None) -> None:
        """``nan_at_step``: fault injection, the loss of that (1-based) step is NaN."""
        self.nan_at_step = nan_at_step
        self.decay = decay
        self.initial_loss = initial_loss
        self.floor = floor
        self.steps = 0
        self.progress = 0.0  # integrated learning signal; drives the loss down
        self.pending_batches = 0
        self.seed = 0
        self.base_model = "noop"
        self.checkpoint_dir: Path | None = None
        self.tokenizer = ByteTokenizer()

    def set_checkpoint_dir(self, path: str | os.PathLike[str]) -> None:
        self.checkpoint_dir = Path(path)

    def start_session(self, config: SessionConfig) -> dict[str, Any]:
        require_optimizer(config.optimizer, "noop")
        self.seed = config.seed
        self.base_model = config.base_model
        return {"backend": "noop", "model": config.base_model, "trainable_params": 0, "device": "none"}

    def get_tokenizer(self) -> ByteTokenizer:
        return self.tokenizer

    def _loss(self, data: list[Datum], salt: int) -> ForwardBackwardResult:
        level = self.floor + (self.initial_loss - self.floor) * math.exp(-self.progress)
        loss = level * (1.0 + 0.05 * _noise(self.seed, self.steps, salt, len(data)))
        if self.nan_at_step is not None and self.steps + 1 >= self.nan_at_step and salt == 0:
            loss = float("nan")
        tokens = sum(d.num_loss_tokens() for d in data)
        logprobs = [[-loss] * d.length for d in data]
        return ForwardBackwardResult(loss, logprobs, {"num_tokens": float(tokens), "num_sequences": float(len(data))})

    def forward(self, data: list[Datum], loss_fn: str = "cross_entropy") -> Future[ForwardBackwardResult]:
        return resolved(self._loss(data, salt=1))

    def forward_backward(
        self, data: list[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future[ForwardBackwardResult]:
        self.pending_batches += 1
        return resolved(self._loss(data, salt=0))

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        if self.pending_batches:
            self.progress += self.decay * params.learning_rate / 1e-4
        self.pending_batches = 0
        self.steps += 1
        return resolved(OptimStepResult(self.steps, {"grad_norm": 1.0 / (1.0 + self.progress), "learning_rate": params.learning_rate}))

    def _state(self) -> dict[str, Any]:
        return {"steps": self.steps, "progress": self.progress, "seed": self.seed, "base_model": self.base_model}

    def save_state(self, name: str, step: int) -> CheckpointRef:
        root = self.checkpoint_dir or Path("checkpoints")
        target = root / name
        tmp = temp_sibling(target)
        tmp.mkdir(parents=True)
        (tmp / "noop_state.json").write_text(json.dumps(self._state()))
        atomic_publish_dir(tmp, target)
        return CheckpointRef(name=name, path=str(target), step=step)

    def load_state(self, ref: CheckpointRef, with_optimizer: bool = True) -> None:
        state = json.loads((Path(ref.path) / "noop_state.json").read_text())
        self.steps, self.progress = state["steps"], state["progress"]

    def save_weights(self, path: str) -> str:
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        (target / "noop_weights.json").write_text(json.dumps(self._state()))
        return str(target)

    def sampling_client(self, base_model: str | None = None) -> NoopSamplingClient:
        return NoopSamplingClient(self.seed, version=0 if base_model else self.steps)

    def close(self) -> None:
        pass
