"""``TrainSession``: the typed state of one started session of the local backend.

``LocalTrainingClient.start_session`` builds it from what the parts return (the
:class:`~kitchen.adapters.local.scale.ScalePlan`, the LoRA setup of :mod:`.lora`, the
:class:`~kitchen.adapters.local.scale.Parallel` wrapping) and hands it explicitly to the
parts that run on it: :func:`kitchen.adapters.local.train_step.run_batch`,
:func:`kitchen.adapters.local.merge.merged_copy`, the checkpoint save and restore in
:mod:`.checkpoint` and the sampler snapshots of :mod:`.snapshots`. None of them reads the
client's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kitchen.adapters.local.loss_head import LossHead
from kitchen.adapters.local.scale import Parallel, Precision, ScalePlan
from kitchen.train.microbatch import MicroBatchOptions


@dataclass
class TrainSession:
    """A started session: the model, what is trained, and how passes are computed."""

    model: Any  # the PEFT model (LoRA) or the transformers model itself (full fine-tuning)
    tokenizer: Any
    device: str
    dtype: Any  # the weights' torch dtype
    lora: bool  # LoRA adapters are trained (False: every weight is)
    params: list[tuple[str, Any]]  # the trainable (name, parameter) pairs, in model order
    vocab_size: int  # rows of the input embedding: the token ids a datum may use
    model_info: dict[str, Any] = field(default_factory=dict)  # load_model's info (base, base_dtype...)
    plan: ScalePlan = field(default_factory=ScalePlan)
    parallel: Parallel = field(default_factory=Parallel)
    loss_head: LossHead = field(default_factory=LossHead)  # one pass or chunked logits (kitchen.adapters.local.loss_head)

    @property
    def micro(self) -> MicroBatchOptions:
        return self.plan.micro

    @property
    def precision(self) -> Precision:
        return self.plan.precision

    def pass_model(self, train: bool) -> Any:
        """The module a pass runs through: the DDP / FSDP2 wrapper when training across ranks."""
        if train and self.parallel.train_model is not None:
            return self.parallel.train_model
        return self.model

    def sampling_autocast(self) -> Any:
        """The autocast dtype samplers built from this session use (CPU bf16 autocast, or None)."""
        if self.precision.cpu_bf16_autocast and self.device == "cpu":
            import torch

            return torch.bfloat16
        return None
