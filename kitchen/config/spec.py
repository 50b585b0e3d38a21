"""The validated run spec: the only configuration object that travels past the CLI.

Hydra composes a DictConfig; ``RunSpec.from_config`` turns it into this strict
pydantic model. Every problem is collected at once and reported as one paragraph per
key, with a did-you-mean for unknown keys.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kitchen.errors import ConfigError, did_you_mean

TrainOnWhat = Literal["last_assistant_message", "all_assistant_messages", "all_messages", "all_tokens"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WorkflowSpec(_Strict):
    name: str = Field(description="registered workflow name")


class AdaptersSpec(_Strict):
    name: str = Field(description="the adapters choice, e.g. local, noop, tinker")
    training: dict[str, Any] = Field(description="TrainingClient: _target_ plus constructor arguments")
    dataset_store: dict[str, Any] = Field(description="DatasetStore: _target_ plus constructor arguments")

    @field_validator("training", "dataset_store")
    @classmethod
    def _needs_target(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "_target_" not in value:
            raise ValueError("needs a _target_ naming the adapter class")
        return value


class TelemetrySpec(_Strict):
    name: str = "default"
    sinks: list[Literal["console", "jsonl"]] = Field(default_factory=lambda: ["console", "jsonl"])
    console_every_s: float = Field(2.0, ge=0, description="plain-output throttle when stdout is not a TTY")


class DistributedSpec(_Strict):
    """issue 11: ``kitchen run distributed.nproc_per_node=N`` starts N ranks through torch.distributed.run."""

    nproc_per_node: int = Field(1, ge=1, description="processes on this node; >1 launches through torch.distributed.run")
    nnodes: str = Field("1", description="nodes, or MIN:MAX for an elastic job (torchrun --nnodes)")
    node_rank: Optional[int] = Field(None, ge=0, description="this node's rank (static rendezvous)")
    rdzv_endpoint: Optional[str] = Field(None, description="HOST:PORT of the rendezvous (multi-node)")
    rdzv_backend: Optional[str] = Field(None, description="c10d (default) or static")


class RunSpec(_Strict):
    """Every hyperparameter a recipe may set; top-level, as in tinker-cookbook."""

    # What and where
    recipe: str = Field(description="recipe name")
    description: str = ""
    workflow: WorkflowSpec
    adapters: AdaptersSpec
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    run_dir: str = Field(description="where config, metrics, events, checkpoints and final weights go")
    resume: bool = Field(False, description="continue the run in run_dir from its last complete checkpoint")
    overwrite: bool = Field(False, description="move an existing run in run_dir aside (to run_dir.old-TIMESTAMP) and start fresh")

    # Model and data
    model: str = Field(description="model alias, HF model id, local path, or a run dir's final weights")
    dataset: Optional[str] = Field(None, description="training data: a JSONL/JSON/CSV/Parquet file or a cached hub dataset")
    test_dataset: Optional[str] = Field(None, description="held-out data for evaluation")
    renderer: str = Field("auto", description="auto | chat_template | role_colon")
    train_on_what: TrainOnWhat = "last_assistant_message"
    max_length: int = Field(512, gt=0, description="tokens per sequence; longer ones are truncated, counted and warned about")

    # Optimisation
    learning_rate: float = Field(1e-4, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(8, gt=0, description="sequences per optimizer step")
    epochs: int = Field(1, gt=0, description="passes over the data when max_steps is not set")
    max_steps: Optional[int] = Field(None, gt=0, description="optimizer steps to run; overrides epochs (the data cycles as needed)")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip_norm: float = Field(1.0, ge=0, description="0 disables clipping")

    # What to train
    lora_rank: int = Field(16, ge=0, description="0 = full fine-tuning")
    lora_alpha: Optional[float] = Field(None, gt=0, description="default 2 * lora_rank")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: str | list[str] = "all-linear"
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = False
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # Bookkeeping
    seed: int = 0
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0 = only at the end)")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0 = only before and after)")
    eval_max_examples: int = Field(64, gt=0)
    num_preview_samples: int = Field(2, ge=0, description="completions shown before and after training")
    preview_max_tokens: int = Field(48, gt=0)
    pipeline_depth: int = Field(1, ge=0, description="steps kept in flight before awaiting results (remote backends)")
    max_retries: int = Field(3, ge=0, description="kitchen-level retries of a failed backend call")

    # Reinforcement learning
    env: str = Field("arithmetic", description="RL environment")
    group_size: int = Field(4, gt=0, description="samples per prompt")
    groups_per_batch: int = Field(4, gt=0, description="prompts per step")
    max_tokens: int = Field(32, gt=0, description="sampled tokens per rollout")
    temperature: float = Field(1.0, ge=0)
    loss_fn: Literal["importance_sampling", "ppo"] = "importance_sampling"
    kl_coef: float = Field(0.0, ge=0, description="KL penalty against the reference model")
    rollout_concurrency: int = Field(4, gt=0)

    # Preference (DPO)
    dpo_beta: float = Field(0.1, gt=0)

    # Distillation
    teacher: Optional[str] = Field(None, description="teacher model (alias, path, or RUN_DIR)")
    distill_mode: Literal["on_policy", "off_policy"] = "on_policy"

    # --- issue 11 keys ---
    micro_batch_size: int = Field(0, ge=0, description="datums per forward/backward pass (gradients accumulate); 0 = the whole batch in one pass")
    max_tokens_per_micro_batch: int = Field(0, ge=0, description="token budget per forward/backward pass (padded rows x length, or packed tokens); 0 = none")
    activation_checkpointing: bool = Field(False, description="recompute each layer's activations in backward: less memory, more compute")
    padding_free: bool = Field(False, description="pack each micro-batch's sequences into one row (position ids restart, no cross-attention)")
    length_grouped: bool = Field(False, description="group sequences of similar length into the same batch (order stays a pure function of seed and step)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast over fp32 master weights: bf16 (CUDA, or a CPU with AVX512-BF16/AMX), fp16 with loss scaling (CUDA)")
    quantization: Optional[Literal["4bit", "8bit"]] = Field(None, description="QLoRA: LoRA on a bitsandbytes-quantized base model (CUDA only)")
    distributed: DistributedSpec = Field(
        default_factory=lambda: DistributedSpec().model_dump(), validate_default=True,
        description="data parallel over processes: distributed.nproc_per_node=N launches N ranks (torchrun)",
    )

    @model_validator(mode="after")
    def _issue11_checks(self) -> "RunSpec":
        from kitchen.train.microbatch import MicroBatchOptions, check_options

        check_options(MicroBatchOptions(self.micro_batch_size, self.max_tokens_per_micro_batch), self.batch_size)
        return self
    # --- end issue 11 keys ---

    @classmethod
    def from_config(cls, data: dict[str, Any], source: str = "the composed config") -> "RunSpec":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The allowed keys at ``loc``'s parent, for did-you-mean."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        field = current.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            current = ann
        else:
            return []
    return list(current.model_fields)


def format_validation_error(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _field_names(RunSpec, loc))
            problems.append(f"unknown key '{key}'.{hint}")
        elif kind == "missing":
            problems.append(f"'{key}' is required but not set (pass {key}=...)")
        elif kind == "literal_error":
            problems.append(f"'{key}' = {err.get('input')!r} is not allowed; {err['msg'][0].lower()}{err['msg'][1:]}")
        else:
            problems.append(f"'{key}' = {err.get('input')!r}: {err['msg'][0].lower()}{err['msg'][1:]}")
    head = f"Invalid run config ({source}): " if len(problems) == 1 else f"Invalid run config ({source}), {len(problems)} problems: "
    text = head + "; ".join(problems)
    return text if text.endswith((".", "?")) else text + "."


def describe_fields() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, description) for every top-level hyperparameter."""
    rows = []
    for name, field in RunSpec.model_fields.items():
        ann = field.annotation
        type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        rows.append((name, type_name, default, field.description or ""))
    return rows
