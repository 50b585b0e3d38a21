"""Sampler snapshots of a local training session that cost what they change, not a model.

``LocalTrainingClient.sampling_client()`` builds a merged, frozen model per snapshot:
about 0.5 GiB for SmolLM2-135M with LoRA on every linear layer, kept alive as long as
the snapshot is. A server whose clients snapshot every step (tinker-cookbook's RL loop)
runs out of memory that way. This module is what ``kitchen serve`` uses instead:

* :func:`capture` copies only the trainable tensors: the LoRA A/B matrices for a LoRA
  session (megabytes), every weight for full fine-tuning. The copy goes to disk
  (safetensors) so it survives a restart; memory holds at most an LRU of them.
* :class:`AdapterHost` is one frozen PEFT model per (base model, LoRA shape) whose
  base tensors are *shared* with the training model that built it (LoRA training never
  changes them), and whose adapter tensors are swapped in per call.
  :class:`AdapterSampler` is a sampling client bound to one snapshot's adapter: each
  call takes the host's lock, loads its adapter (skipped when already loaded), samples.
* Full fine-tuning snapshots load as a whole model (:func:`full_sampler`); the server's
  LRU bounds how many are in memory at once.

The numbers are the same as the merged model's up to float rounding: PEFT computes
``W x + B A x * scale`` where the merged model computes ``(W + B A scale) x``.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Sequence

from kitchen.adapters.local.sampling import LocalSamplingClient
from kitchen.io.atomic import atomic_path
from kitchen.ports.futures import resolved
from kitchen.ports.types import SamplingParams

WEIGHTS_FILE = "weights.safetensors"


def capture(tc: Any) -> tuple[str, dict[str, Any]]:
    """("lora" | "full", {param name: CPU copy}) of a started LocalTrainingClient."""
    import torch

    session = tc.train_session()
    with torch.no_grad():
        tensors = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in session.params}
    return ("lora" if session.lora else "full"), tensors


def write(tensors: dict[str, Any], folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / WEIGHTS_FILE
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp))
    return target


def read(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / WEIGHTS_FILE))


class AdapterHost:
    """A frozen PEFT model over a training session's base tensors, for any adapter of its shape."""

    def __init__(self, tc: Any) -> None:
        import peft

        from kitchen.adapters.local.models.state_dict import clean_config, model_from_state_dict

        session = tc.train_session()
        if not session.lora:
            raise ValueError("AdapterHost needs a LoRA session")
        base = session.model.get_base_model()
        self._shared_base = getattr(base, "_kitchen_shared_base", None)  # keep the process's shared copy registered
        config = clean_config(base.config)
        sd = {k.replace(".base_layer.", "."): v.detach() for k, v in base.state_dict().items() if ".lora_" not in k}
        plain = model_from_state_dict(config, sd, buffers_from=base, dtype=base.dtype)  # shares the base tensors
        pcfg = copy.deepcopy(session.model.peft_config["default"])
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.get_peft_model(plain, pcfg)
        model.config.use_cache = True
        self.client = LocalSamplingClient(model, session.tokenizer, device=session.device,
                                          autocast_dtype=session.sampling_autocast(), name="adapter-host",
                                          loss_chunk_tokens=session.loss_head.chunk_tokens)
        self.names = [n for n, _ in session.params]
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:  # pragma: no cover - PEFT naming changed
            raise RuntimeError(f"adapter host lacks parameters {missing[:3]}")
        self._params = {n: params[n] for n in self.names}
        self.device = session.device
        self.lock = threading.Lock()
        self._active: object | None = None

    def activate(self, owner: object, tensors: dict[str, Any]) -> None:
        """Load ``tensors`` (the caller holds ``self.lock``); a no-op if ``owner``'s are loaded."""
        import torch

        if self._active is owner:
            return
        if set(tensors) != set(self._params):
            raise ValueError("snapshot does not match this adapter shape (was it saved with another LoRA setting?)")
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(tensors[n].to(p.device, p.dtype))
        self._active = owner


class AdapterSampler:
    """A sampling client for one LoRA snapshot: its adapter tensors over a shared host."""

    def __init__(self, host: AdapterHost, tensors: dict[str, Any]) -> None:
        self.host = host
        self.tensors = tensors

    def get_tokenizer(self):
        return self.host.client.tokenizer

    def sample(self, prompt: Sequence[int], num_samples: int, params: SamplingParams) -> Future:
        with self.host.lock:
            self.host.activate(self, self.tensors)
            return resolved(self.host.client.sample(prompt, num_samples, params).result())

    def compute_logprobs(self, tokens: Sequence[int]) -> Future:
        with self.host.lock:
            self.host.activate(self, self.tensors)
            return resolved(self.host.client.compute_logprobs(tokens).result())

    def compute_logprobs_batch(self, seqs: Sequence[Sequence[int]]) -> list[list[float | None]]:
        with self.host.lock:
            self.host.activate(self, self.tensors)
            return self.host.client.compute_logprobs_batch(seqs)


def full_sampler(tc: Any, tensors: dict[str, Any]) -> LocalSamplingClient:
    """A frozen model with a full fine-tuning snapshot's weights (built like tc's model)."""
    from kitchen.adapters.local.models.state_dict import clean_config, model_from_state_dict

    session = tc.train_session()
    base = session.model
    config = clean_config(base.config)
    sd = {k: v.detach() for k, v in base.state_dict().items()}  # buffers/frozen tensors shared
    for n, t in tensors.items():
        sd[n] = t.to(session.device, base.dtype)
    model = model_from_state_dict(config, sd, buffers_from=base, dtype=base.dtype)
    model.config.use_cache = True
    return LocalSamplingClient(model, session.tokenizer, device=session.device, autocast_dtype=session.sampling_autocast(),
                               name="snapshot", loss_chunk_tokens=session.loss_head.chunk_tokens)
