"""The validated run spec: the only configuration object that travels past the CLI.

Hydra composes a DictConfig; ``RunSpec.from_config`` turns it into this strict
pydantic model. Every problem is collected at once and reported as one paragraph per
key, with a did-you-mean for unknown keys.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kitchen.errors import ConfigError, did_you_mean
from kitchen.ports.types import ADAM_EPS, LOSS_CHUNK_TOKENS, OptimizerSpec
from kitchen.train.formats import CANONICAL_FIELDS
from kitchen.train.train_on_what import TrainOnWhatName as TrainOnWhat  # the one definition of its values

KEYED_ERROR = "kitchen_keyed"  # a validator's own sentence that already names its key (dataset[1].weight)


class _Strict(BaseModel):
    # allow_inf_nan=False: learning_rate=inf or 1e999 is a config error naming the key,
    # not a crash mid-run; no hyperparameter has a meaning at inf or nan.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class WorkflowSpec(_Strict):
    name: str = Field(description="registered workflow name")


class AdaptersSpec(_Strict):
    name: str = Field(description="the adapters choice, e.g. local, noop, tinker")
    training: dict[str, Any] = Field(description="TrainingClient: _target_ plus constructor arguments")
    dataset_store: dict[str, Any] = Field(description="DatasetStore: _target_ plus constructor arguments")
    preflight: Optional[str] = Field(
        None, description="module:function checking a session before the run (credentials, model resolution); "
        "it must not load weights or import heavy SDKs")
    tokenizer: Optional[str] = Field(
        None, description="module:function returning the session's tokenizer without weights or downloads (None when "
        "the model is not on this machine); validate and data inspect render the data with it. Unset: the data's "
        "token lengths are first checked when the session opens")
    local_models: bool = Field(
        False, description="the backend loads model= and teacher= on this machine (an alias, a path or a hub id), so "
        "validate resolves them (the hub cache, else a metadata call). False: they are passed to the backend as given")
    local_checkpoints: bool = Field(
        False, description="the backend's checkpoints and final/ are files on this machine that the local backend "
        "loads, so kitchen export, sample and chat open its runs. False: they refuse the run's weights")

    @field_validator("training", "dataset_store")
    @classmethod
    def _needs_target(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "_target_" not in value:
            raise ValueError("needs a _target_ naming the adapter class")
        return value


class TelemetrySpec(_Strict):
    name: str = Field("default", description="the telemetry group choice (conf/telemetry/NAME.yaml)")
    sinks: list[Union[str, dict[str, Any]]] = Field(
        default_factory=lambda: ["console", "jsonl"],
        description="sink names (console, jsonl, wandb, tensorboard, mlflow, prometheus, a plugin's) or {_target_: my.Sink, ...}",
    )


class DistributedSpec(_Strict):
    """``kitchen run distributed.nproc_per_node=N`` starts N ranks through torch.distributed.run."""

    nproc_per_node: int = Field(1, ge=1, description="processes on this node; >1 launches through torch.distributed.run")
    nnodes: str = Field("1", description="nodes, or MIN:MAX for an elastic job (torchrun --nnodes)")
    node_rank: Optional[int] = Field(None, ge=0, description="this node's rank (static rendezvous)")
    rdzv_endpoint: Optional[str] = Field(None, description="HOST:PORT of the rendezvous (multi-node)")
    rdzv_backend: Optional[str] = Field(None, description="c10d (default) or static")


class RunSpec(_Strict):
    """The keys every workflow reads; top-level, as in tinker-cookbook.

    Each workflow extends this with its own schema (``SupervisedConfig`` and friends,
    next to the workflow), mixing in the key groups below, as TRL's ``DPOConfig``
    extends ``TrainingArguments``. A run's spec is an instance of its workflow's schema.
    """

    # What and where
    recipe: str = Field(description="recipe name")
    description: str = Field("", description="one line about the recipe, shown by `kitchen recipes`")
    workflow: WorkflowSpec = Field(description="the workflow group: which algorithm runs (supervised, reinforcement, preference, distillation, a plugin's)")
    adapters: AdaptersSpec = Field(description="the adapters group: the backend (local, noop, tinker, a plugin's) and its settings")
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec, description="the telemetry group: where events and metrics go")
    run_dir: str = Field(description="where config, metrics, events, checkpoints and final weights go")
    resume: bool = Field(False, description="continue the run in run_dir from its last complete checkpoint")
    overwrite: bool = Field(False, description="move an existing run in run_dir aside (to run_dir.old-TIMESTAMP) and start fresh")

    # Model and data
    model: str = Field(description="model alias, HF model id, local path, or a run dir's final weights")
    model_revision: Optional[str] = Field(
        None, description="hub models only: branch, tag or commit to pin (run.json records the resolved commit)")
    chat_template: Optional[str] = Field(
        None, description="a Jinja file that replaces the tokenizer's chat template (saved with the final weights)")
    push_to_hub: Optional[str] = Field(
        None, description="hub repo id (org/name) that final/ is uploaded to at the end of the run (token: HF_TOKEN or `hf auth login`)")
    renderer: Union[str, dict[str, Any]] = Field("auto", description="auto | chat_template | role_colon, or a {_target_: ...} renderer")
    max_length: int = Field(512, gt=0, description="tokens per sequence; longer ones are truncated, counted and warned about")


    # Optimisation
    learning_rate: float = Field(1e-4, gt=0, description="peak AdamW learning rate (after warmup, before decay)")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="decay after warmup: constant, linear to min_lr_ratio, or cosine to min_lr_ratio")
    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup from 0 to learning_rate")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the learning rate the schedule decays to, as a fraction of learning_rate")
    max_steps: Optional[int] = Field(None, gt=0, description="optimizer steps to run; overrides epochs (the data cycles as needed)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay")
    eps: float = Field(ADAM_EPS, gt=0, description="AdamW denominator epsilon")  # the one default: kitchen.ports.types.ADAM_EPS
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    grad_clip_norm: float = Field(1.0, ge=0, description="0 disables clipping")

    # What to train
    lora_rank: int = Field(16, ge=0, description="0 = full fine-tuning")
    lora_alpha: Optional[float] = Field(None, gt=0, description="default 2 * lora_rank")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    lora_targets: str | list[str] = Field("all-linear", description="modules that get LoRA: all-linear, or a list of module names")
    train_mlp: bool = Field(True, description="LoRA on the MLP layers")
    train_attn: bool = Field(True, description="LoRA on the attention layers")
    train_unembed: bool = Field(False, description="LoRA on the output (unembedding) layer too")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="weight dtype of the local model: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the local backend runs: auto (cuda when available), cpu, cuda")

    # How a local backend runs the model (remote backends ignore these)
    micro_batch_size: int = Field(0, ge=0, description="datums per forward/backward pass (gradients accumulate); 0 = the whole batch in one pass")
    max_tokens_per_micro_batch: Optional[Union[Literal["auto"], int]] = Field(
        "auto", description="token budget per forward/backward pass (padded rows x length, or packed tokens): auto (a "
        "budget from the model's size and the free memory, printed and recorded in run.json), a number, or 0 / null "
        "(the whole batch in one pass)")
    loss_chunk_tokens: Optional[int] = Field(
        LOSS_CHUNK_TOKENS, gt=0, description="local backend: tokens whose logits are computed at once for the loss (the "
        "logits are never held for a whole batch); null = one pass over full logits")
    activation_checkpointing: bool = Field(False, description="recompute each layer's activations in backward: less memory, more compute")
    padding_free: bool = Field(False, description="pack each micro-batch's sequences into one row (position ids restart, no cross-attention)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast over fp32 master weights: bf16 (CUDA, or a CPU with AVX512-BF16/AMX), fp16 with loss scaling (CUDA)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="local backend: how passes compute over fp32 master weights and optimizer state: auto (bf16 "
        "autocast on a CPU with AVX512-BF16/AMX or a GPU with bf16, else fp32), fp32, bf16; mixed_precision=bf16|fp16 "
        "wins when set")
    force_precision: bool = Field(
        False, description="allow precision=bf16 on hardware without native bf16 (emulated: several times slower), and "
        "a resume whose precision differs from its checkpoint's (losses then continue only approximately)")
    fused_loss: Literal["auto", "none", "liger", "cut_cross_entropy"] = Field(
        "auto", description="local backend: the loss kernel: auto (a fused linear cross-entropy on CUDA when liger-kernel "
        "or cut-cross-entropy is installed, else the chunked torch path), none (the torch path), liger, cut_cross_entropy")
    quantization: Optional[Literal["4bit", "8bit"]] = Field(None, description="QLoRA: LoRA on a bitsandbytes-quantized base model (CUDA only)")
    distributed: DistributedSpec = Field(
        default_factory=lambda: DistributedSpec().model_dump(), validate_default=True,
        description="data parallel over processes: distributed.nproc_per_node=N launches N ranks (torchrun)",
    )

    # Bookkeeping
    seed: int = Field(0, description="seeds data order, LoRA init and sampling; the same seed gives the same run")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0 = only at the end)")
    checkpoint_mirror: Optional[str] = Field(
        None, description="also copy each checkpoint and the final weights to this folder or fsspec URL (s3://bucket/run)")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0 = only before and after)")
    eval_max_examples: int = Field(64, gt=0, description="test rows scored per evaluation")
    num_preview_samples: int = Field(2, ge=0, description="completions shown before and after training")
    preview_max_tokens: int = Field(48, gt=0, description="tokens per preview completion")
    pipeline_depth: int = Field(1, ge=0, description="steps kept in flight before awaiting results (remote backends)")
    max_retries: int = Field(3, ge=0, description="kitchen-level retries of a failed backend call")
    objective: Optional[str] = Field(
        None, description="sweeps: the metric whose final value each job returns to the sweeper (e.g. loss, test_nll)")
    objective_mode: Literal["min", "max"] = Field("min", description="sweeps: whether a lower (min) or higher (max) objective is better")
    resume_from: Optional[str] = Field(
        None, description="resume from this checkpoint instead of the newest: an index name (step_000010) or a checkpoint folder's path; implies resume=true")
    evaluators: list[Union[str, dict[str, Any]]] = Field(
        default_factory=list, description="extra evaluators run with the workflow's own: names or {_target_: ...} nodes")

    @model_validator(mode="after")
    def _micro_batches_fit(self) -> "RunSpec":
        from kitchen.train.microbatch import MicroBatchOptions, check_options

        budget = self.max_tokens_per_micro_batch
        check_options(MicroBatchOptions(self.micro_batch_size, budget if isinstance(budget, int) else 0),
                      getattr(self, "batch_size", None))
        return self

    @field_validator("max_tokens_per_micro_batch", mode="before")
    @classmethod
    def _token_budget(cls, value: Any) -> Any:
        """auto, a whole number of tokens (0 = one pass) or null: one sentence for anything else."""
        if value is None:
            return None
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return "auto"
            if text in ("null", "none", "~"):
                return None
            if text.isdigit():
                return int(text)
        elif isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ValueError("must be auto (the default: a token budget per pass from the model's size and the free "
                         "memory), a whole number of tokens per pass, or 0 / null (the whole batch in one pass)")

    @field_validator("run_dir")
    @classmethod
    def _run_dir_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; pass run_dir=PATH naming a folder for the run")
        return value

    def optimizer(self) -> OptimizerSpec:
        """The optimizer this run trains with: AdamW from the keys above.

        The engine asks this, not the keys, so a workflow's schema chooses its optimizer
        by overriding this method (a backend refuses a kind it does not run at session start).
        """
        return OptimizerSpec(kind="adamw", beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                             weight_decay=self.weight_decay, grad_clip_norm=self.grad_clip_norm)

    @classmethod
    def from_config(cls, data: dict[str, Any], source: str = "the composed config", elsewhere: Any = None) -> "RunSpec":
        """Validate ``data`` into this schema; every problem at once, in one paragraph.

        ``elsewhere(key)`` may name the workflows a key belongs to, for keys this schema
        does not have.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, cls, elsewhere)) from None


class DatasetKeys(_Strict):
    """Workflows that read a dataset."""

    dataset: Optional[Union[str, list[dict[str, Any]]]] = Field(
        None, description="training data: a JSONL/JSON/CSV/Parquet file or a cached hub dataset, or a mixture: a list of "
        "{path, weight, split, subset, format, columns} sources (docs/data.md, Mixing datasets)")
    dataset_mix: Optional[str] = Field(
        None, description="how a dataset list is mixed: concat (every row once; the default without weights) | "
        "interleave_under (sample by weight until the first source runs out) | interleave_over (until the last runs "
        "out, oversampling the small ones; the default with weights)")
    test_dataset: Optional[str] = Field(None, description="held-out data for evaluation")
    dataset_format: str = Field(
        "auto", description="row format: auto (detect from the first row) | messages | sharegpt | alpaca | "
        "prompt_completion | text (SFT) | preference (DPO)")
    dataset_columns: dict[str, Optional[str]] = Field(
        default_factory=lambda: dict.fromkeys(CANONICAL_FIELDS),
        description="your column for a canonical field, e.g. dataset_columns.messages=dialog "
        "(every canonical field is listed, unset, so Hydra accepts the override without +)")
    dataset_split: Optional[str] = Field(None, description="split of a hub dataset or save_to_disk DatasetDict (default: train, or the only one)")
    dataset_subset: Optional[str] = Field(None, description="config (subset) of a hub dataset")
    test_dataset_split: Optional[str] = Field(None, description="split of test_dataset (default: test, else the only one)")
    test_dataset_subset: Optional[str] = Field(None, description="config (subset) of test_dataset")
    test_split_fraction: float = Field(
        0.0, ge=0, lt=1, description="carve this fraction of the train rows off as the test set (shuffled by seed; needs no test_dataset)")
    tokenize_num_proc: int = Field(1, ge=1, description="processes that tokenize the dataset (datasets.map num_proc)")
    dataset_streaming: bool = Field(
        False, description="read the train set as a stream (datasets streaming=True), tokenizing rows as training goes; "
        "supervised workflow only, needs max_steps")
    dataset_shuffle_buffer: int = Field(
        1000, gt=0, description="with dataset_streaming: rows in the seeded shuffle buffer (shards are shuffled too)")

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_sources(cls, value: Any) -> Any:
        """The list form: each source checked key by key (kitchen.data.mixture), one sentence naming the key."""
        if isinstance(value, (list, tuple)):
            from kitchen.data.mixture import MixtureKeyError, parse_sources

            try:
                return parse_sources(list(value))
            except MixtureKeyError as exc:
                raise PydanticCustomError(KEYED_ERROR, str(exc), {"key": exc.key}) from None
        return value

    @model_validator(mode="after")
    def _mix_strategy(self) -> "DatasetKeys":
        from kitchen.data.mixture import STRATEGIES, MixtureKeyError, strategy_of

        if isinstance(self.dataset, list):
            try:
                strategy_of(self.dataset, self.dataset_mix, self.dataset_streaming)
            except MixtureKeyError as exc:
                raise PydanticCustomError(KEYED_ERROR, str(exc), {"key": exc.key}) from None
        elif self.dataset_mix is not None and self.dataset_mix not in STRATEGIES:
            raise PydanticCustomError(KEYED_ERROR, f"dataset_mix = {self.dataset_mix!r} is not allowed; use one of "
                                      f"{', '.join(STRATEGIES)}.", {"key": "dataset_mix"})
        return self


class ChatDataKeys(DatasetKeys):
    """Workflows that train on rendered chat rows."""

    train_on_what: TrainOnWhat = Field("last_assistant_message", description="which tokens of a conversation carry loss")


def train_on_what_of(spec: object) -> TrainOnWhat:
    """The tokens a workflow's rows train on: its ``train_on_what`` when it has chat data,
    else (preference pairs: the response is the whole target) ChatDataKeys' default."""
    if isinstance(spec, ChatDataKeys):
        return spec.train_on_what
    return ChatDataKeys.model_fields["train_on_what"].default


def dataset_reading(spec: DatasetKeys) -> tuple[str, dict[str, str]]:
    """How the rows are read: the format (``auto`` detects it) and the columns renamed to it.

    For a mixture these are the defaults of every source that sets no ``format`` / ``columns`` of its own."""
    return spec.dataset_format or "auto", {k: v for k, v in (spec.dataset_columns or {}).items() if v}


class BatchKeys(_Strict):
    """Workflows that walk a dataset in epochs of batches."""

    batch_size: int = Field(8, gt=0, description="sequences (or pairs) per optimizer step")
    epochs: int = Field(1, gt=0, description="passes over the data when max_steps is not set")
    length_grouped: bool = Field(False, description="group sequences of similar length into the same batch (order stays a pure function of seed and step)")


class SamplingKeys(_Strict):
    """Workflows that sample groups of completions each step (kitchen.stages.rollouts reads these)."""

    group_size: int = Field(4, gt=0, description="samples per prompt")
    groups_per_batch: int = Field(4, gt=0, description="prompts per step")
    max_tokens: int = Field(32, gt=0, description="sampled tokens per rollout")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of rollouts (0 = greedy)")
    rollout_concurrency: int = Field(4, gt=0, description="rollout lanes sampling at once")


class PolicyGradientKeys(_Strict):
    """Workflows that train on their samples with a policy-gradient loss."""

    loss_fn: Literal["importance_sampling", "ppo"] = Field("importance_sampling", description="policy-gradient loss: importance_sampling or ppo (clipped)")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty against the reference model")


class EpisodeKeys(_Strict):
    """Limits of multi-turn episodes (kitchen.stages.rollouts reads these; the token limit is max_length)."""

    max_turns: int = Field(8, gt=0, description="turns per episode at most (an env's episode ends earlier when it says done)")
    max_env_failures: int = Field(
        8, gt=0, description="consecutive episodes an env may fail (raise, or a tool that errs or hangs) before the run "
        "stops with the env's name and last error")
    env_failure_reward: float = Field(0.0, description="the reward of an episode ended by an env that raised")


class RolloutKeys(SamplingKeys, PolicyGradientKeys, EpisodeKeys):
    """Sampling plus a policy-gradient loss, and the episode limits: RL and on-policy distillation."""


def all_keys(model: type[BaseModel]) -> list[str]:
    """``model``'s keys plus every known workflow's, so did-you-mean spans all schemas."""
    try:
        from kitchen.config.keys import every_key

        return sorted(set(model.model_fields) | set(every_key()))
    except Exception:  # noqa: BLE001 - a broken plugin must not hide the message
        return list(model.model_fields)


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


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] | None = None,
                            elsewhere: Callable[[str], str] | None = None) -> str:
    model = model or RunSpec
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        kind = err["type"]
        if kind == KEYED_ERROR:
            problems.append(err["msg"])
        elif kind == "extra_forbidden":
            other = elsewhere(key) if elsewhere and len(loc) == 1 else None
            if other:
                problems.append(other)
            else:
                choices = _field_names(model, loc) if len(loc) > 1 else all_keys(model)
                problems.append(f"unknown key '{key}'.{did_you_mean(str(loc[-1]), choices)}")
        elif kind == "missing":
            problems.append(f"'{key}' is required but not set (pass {key}=...)")
        elif kind == "literal_error":
            problems.append(f"'{key}' = {err.get('input')!r} is not allowed; {err['msg'][0].lower()}{err['msg'][1:]}")
        else:
            msg = err["msg"]
            if kind == "value_error" and msg.startswith("Value error, "):  # a validator's own sentence
                msg = msg[len("Value error, "):]
            problems.append(f"'{key}' = {err.get('input')!r}: {msg[0].lower()}{msg[1:]}")
    head = f"Invalid run config ({source}): " if len(problems) == 1 else f"Invalid run config ({source}), {len(problems)} problems: "
    text = head + "; ".join(problems)
    return text if text.endswith((".", "?")) else text + "."


STRUCTURAL_KEYS = ("recipe", "description", "workflow", "adapters", "telemetry")


def type_name(annotation: Any) -> str:
    """A reader's name for a field type: ``Literal`` shows its choices, ``Optional[int]`` shows ``int``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is Union or type(annotation).__name__ == "UnionType":
        parts = [type_name(a) for a in args if a is not type(None)]
        return parts[0] if len(parts) == 1 else " | ".join(parts)
    if origin in (list, tuple):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "dict"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def describe_fields(model: type[BaseModel] | None = None) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, description) for every top-level hyperparameter of ``model``."""
    rows = []
    for name, field in (model or RunSpec).model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        rows.append((name, type_name(field.annotation), default, field.description or ""))
    return rows


def own_keys(model: type[BaseModel]) -> list[str]:
    """The keys ``model`` adds to the common RunSpec (a workflow's own hyperparameters)."""
    return [k for k in model.model_fields if k not in RunSpec.model_fields]
