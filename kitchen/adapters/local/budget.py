"""``max_tokens_per_micro_batch=auto`` (the default): a token budget per pass from the model and the free memory.

A training pass keeps, for backward, activations of every decoder layer for every token
it computes. Counted for a Llama-shaped layer (the inputs of the norms, of q/k/v/o and of
the MLP's gate/up/down, the attention output, the MLP's intermediate products and the
autograd buffers of backward), that is about ``12 x hidden + 6 x intermediate`` floats
per token and layer. It matches what ``bench_scale.py`` and issue 21 measured: 130 KiB
per token on the 2-layer benchmark model with its one-pass logits, 23.3 GB for SmolLM2 at
16 x 512 in one pass, 17.5 GB with the loss in chunks of 256.

The budget is the number of tokens whose activations fill ``MEMORY_FRACTION`` of what is
free once the model has loaded (``torch.cuda.mem_get_info`` on CUDA; on the CPU
``MemAvailable`` of /proc/meminfo, or psutil, and the cgroup's limit when one is set),
less the chunked loss's fixed footprint (one chunk's logits, softmax and gradient) and,
for full fine-tuning, the gradients and AdamW state not yet allocated. It is rounded down
to a power of two and held between ``max_length`` (one sequence is never split) and a cap:
``CPU_CAP`` on the CPU, where bigger passes only leave the caches sooner (issue 21: 1024-token
micro-batches ran 1.9x faster than one 8k-token pass), ``CUDA_CAP`` on a GPU.

An explicit number, ``0`` or ``null`` (one pass) is used as given. A resume reuses the
budget its checkpoint recorded, so micro-batches (and so float rounding) stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AUTO = "auto"
MEMORY_FRACTION = 0.5  # of the free memory, after the model has loaded
CPU_CAP = 1024
CUDA_CAP = 16384
GB = 1e9


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def explicit_tokens(value: Any) -> int:
    """An explicit ``max_tokens_per_micro_batch`` as the micro-batch planner takes it (0 = none)."""
    if value is None or is_auto(value):
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        from kitchen.errors import ConfigError

        raise ConfigError(f"max_tokens_per_micro_batch={value!r} is not allowed: use auto (the default: a budget from "
                          "the model and the free memory), a whole number of tokens per pass, or null (one pass).")
    return int(value)


@dataclass(frozen=True)
class Budget:
    """The chosen budget and what it came from (printed, and recorded in run.json)."""

    tokens: int
    free_bytes: int
    bytes_per_token: int
    fixed_bytes: int
    source: str  # where the free memory was read
    limited_by: str  # "cap", "memory" or "max_length"

    def note(self) -> str:
        return (f"auto: {self.tokens} tokens per pass ({self.free_bytes / GB:.1f} GB free by {self.source}, "
                f"~{self.bytes_per_token / 1e6:.2f} MB per token, limited by {self.limited_by})")

    def facts(self) -> dict[str, Any]:
        return {"max_tokens_per_micro_batch": self.tokens, "micro_batch_budget": self.note()}


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """What the cgroup (v2, else v1) still lets this process allocate, when it has a limit."""
    for limit_path, used_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path, encoding="utf-8") as fh:
                raw = fh.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 1 << 60:  # v1's "no limit"
                return None
            with open(used_path, encoding="utf-8") as fh:
                used = int(fh.read().strip())
            return max(limit - used, 0)
        except (OSError, ValueError):
            continue
    return None


def free_memory(device: str) -> tuple[int, str]:
    """Bytes free for this process's activations on ``device``, and where that was read."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), "torch.cuda.mem_get_info"
    free = _meminfo_available()
    source = "/proc/meminfo"
    if free is None:
        try:
            import psutil

            free, source = int(psutil.virtual_memory().available), "psutil"
        except ImportError:  # pragma: no cover - psutil is a dependency
            free, source = 4 * 1024**3, "a 4 GiB guess (no /proc/meminfo, no psutil)"
    room = _cgroup_room()
    if room is not None and room < free:
        free, source = room, "the cgroup limit"
    return free, source


def _cfg(model: Any) -> Any:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "text_config", None) or cfg


def bytes_per_token(model: Any, *, act_bytes: int = 4, one_pass_vocab: int = 0) -> int:
    """Activation bytes a training pass keeps per token (plus the logits' when the loss is one pass)."""
    cfg = _cfg(model)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 1)
    per = layers * (12 * hidden + 6 * inter) * act_bytes
    return int(per + one_pass_vocab * 4 * 3)  # one pass: fp32 logits, their softmax and gradient per token


def choose(model: Any, *, device: str, vocab: int, chunk_tokens: int | None, max_length: int,
           full_finetune_params: int = 0, act_bytes: int = 4, free: tuple[int, str] | None = None) -> Budget:
    """The auto budget for a session on ``model`` (loaded already, so ``free`` excludes its weights)."""
    free_bytes, source = free if free is not None else free_memory(device)
    per_token = bytes_per_token(model, act_bytes=act_bytes, one_pass_vocab=0 if chunk_tokens else vocab)
    fixed = (int(chunk_tokens) * vocab * 4 * 3 if chunk_tokens else 0) + full_finetune_params * 4 * 3
    room = max(int(free_bytes * MEMORY_FRACTION) - fixed, 0)
    fits = room // max(per_token, 1)
    tokens = 1 << max(int(fits).bit_length() - 1, 0) if fits > 0 else 0
    cap = CUDA_CAP if device.startswith("cuda") else CPU_CAP
    limited_by = "memory"
    if tokens >= cap:
        tokens, limited_by = cap, "cap"
    if tokens < max_length:
        tokens, limited_by = int(max_length), "max_length"
    return Budget(tokens=int(tokens), free_bytes=int(free_bytes), bytes_per_token=per_token, fixed_bytes=fixed,
                  source=source, limited_by=limited_by)


__all__ = ["AUTO", "Budget", "CPU_CAP", "CUDA_CAP", "bytes_per_token", "choose", "explicit_tokens", "free_memory", "is_auto"]
