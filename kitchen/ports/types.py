"""Backend-neutral value types with Tinker's semantics.

Every backend (noop, local torch, the Tinker SDK) speaks these types, so one workflow
runs unchanged on all of them. They are plain dataclasses over Python lists: no torch,
no numpy, cheap to build, easy to serialise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

LossFn = Literal["cross_entropy", "importance_sampling", "ppo"]
LOSS_FNS: tuple[str, ...] = ("cross_entropy", "importance_sampling", "ppo")


@dataclass
class Datum:
    """One training example: input tokens plus per-token loss inputs.

    ``loss_fn_inputs`` holds lists aligned with ``model_input`` (same length):
    ``target_tokens`` (int) and ``weights`` (float) always; ``logprobs`` (the sampler's
    logprobs of the targets) and ``advantages`` for the RL losses.
    """

    model_input: list[int]
    loss_fn_inputs: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.model_input)

    def num_loss_tokens(self) -> int:
        """Tokens with a nonzero weight (cached per weights list: it is read every step)."""
        weights = self.loss_fn_inputs.get("weights", ())
        cached = self.__dict__.get("_loss_tokens")
        if cached is not None and cached[0] is weights:
            return cached[1]
        count = sum(1 for w in weights if w)
        self.__dict__["_loss_tokens"] = (weights, count)
        return count


# AdamW's epsilon, the one default: what every recipe has always trained with (the run
# spec's ``eps`` key defaults to it, and the engine passes it on every optim_step). The
# tinker SDK's own AdamParams defaults to 1e-12, but a Tinker client always sends its
# value, so that default never reaches a kitchen optimizer through the port.
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class AdamParams:
    """Tinker's AdamW step parameters (decoupled weight decay; 0 clip = no clipping)."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = ADAM_EPS
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


# The optimizers the training port defines. ``optim_step`` takes AdamW's per-step
# parameters (Tinker's contract), so AdamW is the one every backend runs; a backend that
# adds another lists it in its own ``OPTIMIZERS`` and takes it from the session config.
OPTIMIZERS: tuple[str, ...] = ("adamw",)


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer a session trains with, as the workflow's config chooses it.

    The engine does not build optimizer settings: it asks the run spec
    (:meth:`kitchen.config.spec.RunSpec.optimizer`, which a workflow's schema may
    override) once, passes the spec to ``start_session`` in :class:`SessionConfig` so a
    backend refuses a kind it cannot run before any step, and turns it into each step's
    :class:`AdamParams` with the scheduled learning rate (:meth:`step`).
    """

    kind: str = "adamw"
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = ADAM_EPS
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def step(self, learning_rate: float) -> AdamParams:
        """One optim_step's parameters at ``learning_rate``."""
        return AdamParams(learning_rate=learning_rate, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                          weight_decay=self.weight_decay, grad_clip_norm=self.grad_clip_norm)


def require_optimizer(optimizer: OptimizerSpec, backend: str, supported: tuple[str, ...] = OPTIMIZERS) -> None:
    """Refuse, before any step, an optimizer kind this backend does not run."""
    if optimizer.kind not in supported:
        from kitchen.errors import ConfigError

        raise ConfigError(
            f"The workflow asks for the optimizer {optimizer.kind!r}, which the {backend} backend does not run. "
            f"It runs: {', '.join(supported)}. The optimizer comes from the workflow config's optimizer() "
            "(kitchen.config.spec.RunSpec.optimizer); return one of these kinds there, or use a backend that runs it.")


@dataclass(frozen=True)
class LoraConfig:
    """What to train. ``rank=0`` means full fine-tuning."""

    rank: int = 16
    alpha: float | None = None  # None: 2 * rank
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = False


LOSS_CHUNK_TOKENS = 256  # the default chunk of the loss's logits (docs/benchmarks.md has the measurement)


@dataclass(frozen=True)
class SessionConfig:
    """Everything a TrainingClient needs to open a session on a base model."""

    base_model: str
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0
    dtype: str = "auto"  # auto | float32 | bfloat16
    device: str = "auto"  # auto | cpu | cuda
    max_length: int = 512
    model_revision: str | None = None  # hub models: branch, tag or commit
    model_commit: str | None = None  # resume: load exactly this commit, not what model_revision points to now
    chat_template: str | None = None  # a Jinja file replacing the tokenizer's template
    # --- how a backend that runs the model itself scales a batch (remote backends ignore these)
    micro_batch_size: int = 0  # datums per forward/backward pass; 0 = the whole batch
    max_tokens_per_micro_batch: int | str | None = "auto"  # token budget per pass; auto = from the free memory; 0/None = none
    loss_chunk_tokens: int | None = LOSS_CHUNK_TOKENS  # logits computed this many tokens at a time; None = one pass
    activation_checkpointing: bool = False
    padding_free: bool = False  # pack a micro-batch's sequences into one row
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast over fp32 master weights)
    precision: str = "auto"  # auto | fp32 | bf16: autocast over fp32 master weights (mixed_precision wins when set)
    force_precision: bool = False  # bf16 without native hardware; a resume across precisions
    fused_loss: str = "auto"  # auto | none | liger | cut_cross_entropy
    quantization: str | None = None  # None | 4bit | 8bit (QLoRA, CUDA only)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)  # the backend refuses a kind it does not run


@dataclass
class ForwardBackwardResult:
    """What forward_backward (or forward) returns for one batch.

    ``loss`` is the batch loss as the backend optimised it (for cross_entropy: the
    weighted token mean). ``logprobs`` holds, per datum, the logprob of each target
    token. ``metrics`` carries backend extras (token counts, clip fractions...).
    """

    loss: float
    logprobs: list[list[float]]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class OptimStepResult:
    step: int
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. grad_norm, lr


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] | tuple[int, ...] = ()
    seed: int | None = None


@dataclass
class SampledSequence:
    tokens: list[int]
    logprobs: list[float]
    stop_reason: Literal["stop", "length"] = "length"


@dataclass
class SampleResult:
    sequences: list[SampledSequence]


@dataclass(frozen=True)
class CheckpointRef:
    """Where a backend saved state: a local path or a backend URI (``tinker://...``)."""

    name: str
    path: str
    step: int
    kind: Literal["state", "weights", "sampler"] = "state"
