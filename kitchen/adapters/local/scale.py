"""Scaling options of the local backend: micro-batching, activation checkpointing,
padding-free rows, mixed precision, QLoRA, and data parallel across torchrun ranks.

``LocalTrainingClient.start_session`` calls three hooks from here, in order, and keeps
what they return:

* :func:`plan_session` checks the options against this machine, before any weights
  load, and returns a :class:`ScalePlan` (the decisions, the :class:`Precision` a pass
  computes in, and the joined process group when there are several ranks);
* :func:`prepare_model` (activation checkpointing, QLoRA preparation) returns the model;
* :func:`wrap_parallel` (DDP for LoRA, FSDP2 ``fully_shard`` for full fine-tuning)
  returns a :class:`Parallel`: the model training passes go through, and the ranks.

Nothing here reads or writes the client: its parts pass these objects to each other.

Data parallel uses PyTorch's own engine only: torchrun sets the environment, DDP and
FSDP2 synchronise gradients. Both *average* gradients over ranks; the Tinker loss is a
sum, so :mod:`train_step` multiplies each rank's loss by the world size.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from typing import Any

from kitchen.errors import ConfigError
from kitchen.train.microbatch import MicroBatchOptions, check_options

QUANTIZATIONS = ("4bit", "8bit")
MIXED = ("no", "bf16", "fp16")
PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> str | None:
    """'amx_bf16' or 'avx512_bf16' when this CPU computes bf16 natively (Linux /proc/cpuinfo), else None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    for name in ("amx_bf16", "avx512_bf16"):
                        if name in flags:
                            return name
                    return None
    except OSError:
        return None
    return None


@dataclass
class Precision:
    """How a forward/backward pass computes: autocast and the fp16 loss scaler.

    ``autocast_dtype`` comes from ``precision`` (auto: bf16 where the hardware computes it
    natively) or ``mixed_precision`` (bf16 | fp16), always over fp32 master weights and
    optimizer state; ``cpu_bf16_autocast`` (the client's old option, now ``precision=bf16``)
    also autocasts the samplers. ``scaler`` is the CUDA GradScaler of ``mixed_precision=fp16``.
    ``name`` is what a pass computes in (fp32 | bf16 | fp16): a checkpoint records it and a
    resume in another precision is refused unless forced.
    """

    device: str = "cpu"
    autocast_dtype: Any = None
    cpu_bf16_autocast: bool = False
    scaler: Any = None
    name: str = "fp32"
    reason: str = ""

    def autocast(self):
        """The autocast context of one pass (a null context when none applies)."""
        import torch

        if self.autocast_dtype is not None:  # mixed_precision=bf16|fp16
            return torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast_dtype)
        if self.cpu_bf16_autocast and self.device == "cpu":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: Any) -> None:
        """``loss.backward()``, through the fp16 GradScaler when one is active."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()


@dataclass
class ScalePlan:
    """What :func:`plan_session` decided, checked before any weights load."""

    micro: MicroBatchOptions = field(default_factory=MicroBatchOptions)
    activation_checkpointing: bool = False
    mixed_precision: str = "no"
    quantization: str | None = None
    world_size: int = 1
    notes: dict[str, Any] = field(default_factory=dict)
    precision: Precision = field(default_factory=Precision)
    dist: Any = None  # torch.distributed, its process group joined, when world_size > 1
    auto_budget: bool = False  # max_tokens_per_micro_batch=auto: the client sets micro.max_tokens once the model loads
    budget_note: str | None = None

    def facts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.micro.micro_batch_size:
            out["micro_batch_size"] = self.micro.micro_batch_size
        if self.micro.max_tokens:
            out["max_tokens_per_micro_batch"] = self.micro.max_tokens
        if self.budget_note:
            out["micro_batch_budget"] = self.budget_note
        if self.micro.padding_free:
            out["padding_free"] = True
        if self.activation_checkpointing:
            out["activation_checkpointing"] = True
        prec = self.precision
        if prec.autocast_dtype is not None:
            out["precision"] = f"{prec.name} autocast, fp32 master weights" + (f" ({prec.reason})" if prec.reason else "")
        else:
            out["precision"] = prec.name + (f" ({prec.reason})" if prec.reason else "")
        out["compute_precision"] = prec.name
        if self.quantization:
            out["quantization"] = self.quantization
        if self.world_size > 1:
            out["world_size"] = self.world_size
        out.update(self.notes)
        return out


def check_cuda_only_options(mixed_precision: Any, quantization: Any, device: str) -> None:
    """fp16 loss scaling and bitsandbytes quantization exist only on CUDA. One check for the
    session (which knows the device) and for preflight (which asks torch only when one of
    these options is set), so ``kitchen validate`` refuses what ``kitchen run`` would."""
    if device.startswith("cuda"):
        return
    if str(mixed_precision or "no").lower() == "fp16":
        raise ConfigError("mixed_precision=fp16 (with loss scaling) is for CUDA GPUs without bf16; this run is on the CPU. "
                          "Use mixed_precision=bf16 on a CPU with native bf16, or mixed_precision=no.")
    if quantization and str(quantization).lower() in QUANTIZATIONS:
        raise ConfigError(
            f"quantization={str(quantization).lower()} (QLoRA through bitsandbytes) needs a CUDA GPU, and this run is on "
            f"the CPU (device={device}). Leave quantization unset to train LoRA on full-precision weights."
        )


def plan_session(config: Any, device: str, dtype: Any, *, threads: int | None = None,
                 cpu_bf16_autocast: bool = False) -> ScalePlan:
    """Check the scale options of ``config`` (a SessionConfig) against this machine.

    Raises ConfigError before any weights load. ``threads`` is the client's option (None:
    the ranks of a CPU node share its cores); ``cpu_bf16_autocast`` goes into the plan's
    :class:`Precision`. With several ranks this joins the process group.
    """
    import torch

    from kitchen.adapters.local.budget import explicit_tokens, is_auto
    from kitchen.runs import distributed

    micro = MicroBatchOptions(
        micro_batch_size=int(config.micro_batch_size or 0),
        max_tokens=explicit_tokens(config.max_tokens_per_micro_batch),
        padding_free=bool(config.padding_free),
    )
    check_options(micro)
    plan = ScalePlan(micro=micro, activation_checkpointing=bool(config.activation_checkpointing),
                     precision=Precision(device=device, cpu_bf16_autocast=bool(cpu_bf16_autocast)),
                     auto_budget=is_auto(config.max_tokens_per_micro_batch))
    mixed = str(config.mixed_precision or "no").lower()
    if mixed not in MIXED:
        raise ConfigError(f"mixed_precision={mixed!r} is not allowed: use no, bf16 or fp16.")
    if mixed != "no" and dtype != torch.float32:
        raise ConfigError(
            f"mixed_precision={mixed} keeps fp32 master weights and computes in {mixed}: it needs dtype=float32, "
            f"but dtype is {str(dtype).replace('torch.', '')}. Use dtype=float32 with mixed_precision={mixed}, or "
            "dtype=bfloat16 with mixed_precision=no for bf16 weights."
        )
    on_cuda = device.startswith("cuda")
    check_cuda_only_options(mixed, config.quantization, device)
    if mixed == "bf16" and not on_cuda and cpu_native_bf16() is None:
        raise ConfigError("mixed_precision=bf16 on the CPU needs native bf16 (AVX512-BF16 or AMX), which this CPU lacks; "
                          "use mixed_precision=no (fp32).")
    if mixed == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision=bf16: this GPU has no bf16; use mixed_precision=fp16 (loss scaling).")
    plan.mixed_precision = mixed
    if mixed == "bf16":
        plan.precision.autocast_dtype = torch.bfloat16
        plan.precision.name, plan.precision.reason = "bf16", "mixed_precision=bf16"
        if not on_cuda:
            plan.notes["cpu_bf16"] = cpu_native_bf16()
    elif mixed == "fp16":
        plan.precision.autocast_dtype = torch.float16
        plan.precision.scaler = torch.amp.GradScaler("cuda")
        plan.precision.name, plan.precision.reason = "fp16", "mixed_precision=fp16"
    else:
        resolve_precision(plan.precision, config.precision, dtype, force=bool(config.force_precision),
                          legacy_cpu_bf16=bool(cpu_bf16_autocast))
        if plan.precision.name == "bf16" and not on_cuda and cpu_native_bf16():
            plan.notes["cpu_bf16"] = cpu_native_bf16()
    quant = config.quantization
    if quant:
        quant = str(quant).lower()
        if quant not in QUANTIZATIONS:
            raise ConfigError(f"quantization={quant!r} is not allowed: use 4bit or 8bit (QLoRA), or leave it unset.")
        if not config.lora.rank:
            raise ConfigError(f"quantization={quant} trains LoRA adapters on frozen quantized weights: set lora_rank > 0.")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"quantization={quant} needs bitsandbytes: pip install 'crucible-kitchen[qlora]'."
            ) from None
        plan.quantization = quant
    plan.world_size = distributed.world_size()
    if plan.world_size > 1:
        plan.dist = distributed.ensure_process_group()
        if not on_cuda and not threads:  # the node's cores are shared by its ranks
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            from kitchen.adapters.local.threads import default_threads

            torch.set_num_threads(max(1, default_threads() // local))
        plan.notes["parallel"] = "ddp" if config.lora.rank else "fsdp2"
    if plan.notes.get("cpu_bf16") is None:
        plan.notes.pop("cpu_bf16", None)
    return plan


def bf16_hardware(device: str) -> str | None:
    """What computes bf16 natively here (a CPU flag, or "cuda"), or None."""
    if device.startswith("cuda"):
        import torch

        return "cuda bf16" if torch.cuda.is_bf16_supported() else None
    return cpu_native_bf16()


def resolve_precision(prec: Precision, asked: Any, dtype: Any, *, force: bool = False,
                      legacy_cpu_bf16: bool = False) -> Precision:
    """Fill ``prec`` (autocast dtype, name, reason) from ``precision=auto|fp32|bf16``; ConfigError when impossible."""
    import torch

    device = prec.device
    name = str(asked or "auto").strip().lower()
    if name not in PRECISIONS:
        raise ConfigError(f"precision={asked!r} is not allowed: use auto (bf16 autocast where the CPU or GPU computes "
                          "bf16 natively, else fp32), fp32 or bf16.")
    if legacy_cpu_bf16 and name == "auto" and device == "cpu":
        name = "bf16"  # adapters.training.cpu_bf16_autocast=true, the old switch, is precision=bf16
    if dtype != torch.float32:  # bf16 weights (dtype=bfloat16, or auto on CUDA): no autocast on top
        if name == "fp32":
            raise ConfigError(f"precision=fp32 computes over fp32 weights, but dtype={str(dtype).replace('torch.', '')}. "
                              "Use dtype=float32 (or dtype=auto on the CPU) with precision=fp32.")
        prec.name, prec.reason = "bf16", "bf16 weights (dtype)"
        return prec
    hardware = bf16_hardware(device)
    if name == "fp32":
        prec.name, prec.reason = "fp32", "precision=fp32"
        return prec
    if name == "auto":
        if hardware is None:
            where = "GPU" if device.startswith("cuda") else "CPU (no avx512_bf16 or amx_bf16 flag)"
            prec.name, prec.reason = "fp32", f"auto: this {where} computes bf16 only by emulation"
            return prec
        prec.name, prec.reason = "bf16", f"auto: {hardware}"
    else:  # bf16
        if hardware is None and not force:
            where = ("GPU has no bf16" if device.startswith("cuda")
                     else "CPU reports no native bf16 (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo)")
            raise ConfigError(
                f"precision=bf16: this {where}, so torch would emulate bf16, which typically runs several times slower "
                "than fp32 and saves no memory (master weights and optimizer state stay fp32). Use precision=auto or "
                "fp32, or pass force_precision=true to run emulated bf16 anyway.")
        prec.name, prec.reason = "bf16", f"precision=bf16 ({hardware or 'emulated: force_precision=true'})"
    prec.autocast_dtype = torch.bfloat16
    return prec


def check_resume_precision(saved: Any, now: str, *, force: bool, path: str) -> None:
    """A resume continues bit for bit only in the precision its checkpoint trained in."""
    if not saved or saved == now or force:
        return
    raise ConfigError(
        f"Cannot resume from {path} in {now}: its checkpoint trained in {saved}, and a change of precision makes the "
        f"losses continue only approximately, not bit for bit. Resume with precision={saved}, or pass "
        f"force_precision=true to continue in {now} anyway.")


def prepare_model(model: Any, plan: ScalePlan, device: str) -> Any:
    """Activation checkpointing and QLoRA preparation, before LoRA wraps the model."""
    if plan.quantization:
        model = quantize(model, plan.quantization, device)
    if plan.activation_checkpointing:
        # Non-reentrant checkpointing recomputes each decoder layer in backward and works
        # with frozen inputs (LoRA) without enable_input_require_grads.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def quantize(model: Any, quant: str, device: str) -> Any:
    """Replace the body's Linear layers by bitsandbytes 4-bit (NF4) or 8-bit layers.

    The unembedding stays in full precision (as QLoRA does). Each new layer gets its
    weight as a bitsandbytes parameter (``Params4bit`` / ``Int8Params``) built from the
    original tensor; bitsandbytes quantizes it when it moves to ``device``. (Assigning
    plain tensors with ``load_state_dict(assign=True)`` would drop that parameter type
    and leave the layers unquantized and unusable.) Training refuses quantization off
    CUDA; the CPU tests call this directly, with bitsandbytes' CPU kernels.
    """
    import bitsandbytes as bnb
    import peft
    import torch
    from transformers import BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    cfg = BitsAndBytesConfig(
        load_in_4bit=quant == "4bit", load_in_8bit=quant == "8bit", bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head"],
    )
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    model = model.to("cpu")
    model = replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=cfg)
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.weight = bnb.nn.Params4bit(state.pop(f"{name}.weight"), requires_grad=False, quant_type="nf4")
        elif isinstance(module, bnb.nn.Linear8bitLt):
            module.weight = bnb.nn.Int8Params(state.pop(f"{name}.weight"), requires_grad=False, has_fp16_weights=False)
    model.load_state_dict(state, strict=False, assign=True)  # the rest: embeddings, norms, biases, lm_head
    model = model.to(device)  # bitsandbytes quantizes its parameters as they move
    model.config.quantization_config = cfg
    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def is_quantized(weight: Any) -> bool:
    """A bitsandbytes 4-bit or 8-bit weight (QLoRA's frozen base)."""
    return type(weight).__name__ in ("Params4bit", "Int8Params")


def dequantized(module: Any) -> Any:
    """``module.weight`` as a plain tensor in the layer's compute precision.

    Merging LoRA into a QLoRA base, and writing the merged weights in the base dtype,
    both start from the dequantized base weight: the packed 4-bit storage cannot take
    a LoRA delta, and transformers cannot load it as a plain checkpoint.
    """
    weight = module.weight
    if not is_quantized(weight):
        return weight
    from peft.utils.integrations import dequantize_bnb_weight

    return dequantize_bnb_weight(weight, state=getattr(module, "state", None))


@dataclass
class Parallel:
    """This process's place among the ranks, and the model its training passes go through.

    A single process has ``dist=None`` and no ``train_model`` (passes use the model
    itself). With several ranks, ``train_model`` is the DDP wrapper (LoRA) or the
    FSDP2-sharded model (full fine-tuning, ``fsdp=True``: its parameters are DTensor
    shards, so the trainable list is taken after wrapping).
    """

    dist: Any = None
    train_model: Any = None
    fsdp: bool = False

    @property
    def world_size(self) -> int:
        return self.dist.get_world_size() if self.dist is not None else 1

    @property
    def rank(self) -> int:
        return self.dist.get_rank() if self.dist is not None else 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a single process)."""
        if self.dist is not None:
            self.dist.barrier()


def wrap_parallel(model: Any, plan: ScalePlan, *, lora: bool, device: str) -> Parallel:
    """DDP around a LoRA model; FSDP2 ``fully_shard`` per decoder layer and root for full fine-tuning."""
    dist = plan.dist
    if dist is None:
        return Parallel()
    import torch

    if lora:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
        return Parallel(dist=dist, train_model=DDP(model, device_ids=ids))
    from torch.distributed.fsdp import fully_shard

    layers = _decoder_layers(model)
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return Parallel(dist=dist, train_model=model, fsdp=True)


def _decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks FSDP2 shards one by one (``model.model.layers`` for Llama-like models)."""
    import torch

    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return list(mod)
    return []


# ---------------------------------------------------------------- checkpoints across ranks
def full_tensor(t: Any) -> Any:
    """A plain tensor: FSDP2 DTensors are gathered (a collective every rank must call)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def like(reference: Any, full: Any) -> Any:
    """``full`` laid out like ``reference`` (sharded again when the reference is a DTensor)."""
    if hasattr(reference, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(reference.dtype), reference.device_mesh, reference.placements)
    return full


def full_optimizer_state(optimizer: Any) -> dict[str, Any]:
    sd = optimizer.state_dict()
    state = {i: {k: full_tensor(v) for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def local_optimizer_state(full: dict[str, Any], params: list[Any]) -> dict[str, Any]:
    """Re-shard a full optimizer state dict onto this rank's DTensor parameters."""
    state = {}
    for i, s in full["state"].items():
        p = params[int(i)]
        state[i] = {k: (like(p, v) if getattr(v, "dim", lambda: 0)() > 0 and hasattr(p, "device_mesh") else v) for k, v in s.items()}
    return {"state": state, "param_groups": full["param_groups"]}


def world_size_note(saved: int | None, now: int) -> str | None:
    saved = int(saved or 1)
    if saved == now:
        return None
    return (
        f"this checkpoint was written by {saved} process(es) and the run now has {now}: every step still sees the "
        "same examples in the same order (each rank takes a slice of the same global batch), but gradients are "
        "summed in a different order, so losses continue only to float rounding, not bit for bit."
    )


def writes_files() -> bool:
    """Only rank 0 writes checkpoints and final weights."""
    from kitchen.runs.distributed import is_rank0

    return is_rank0()
