"""``LocalTrainingClient``: the TrainingClient port over torch + transformers + peft.

Built by Hydra (``_target_: kitchen.adapters.local.LocalTrainingClient``) with optional
kwargs ``threads`` (CPU threads; default: every core this process may use),
``cache_dir`` (model cache root; default ``$KITCHEN_CACHE_DIR`` / XDG cache),
``cpu_bf16_autocast`` (bf16 autocast for the CPU forward/backward; weights and optimizer
stay fp32) and ``checkpoint_dir`` (root for :meth:`save_state`; also settable later with
:meth:`set_checkpoint_dir` or by assigning ``client.checkpoint_dir``).

Computation is synchronous: every method that returns a Future returns a resolved one.

Notes on exactness: ``forward_backward`` uses right padding and *no* attention mask.
For a causal LM that is exact (a real token only attends to earlier, real tokens) and it
keeps the fast ``is_causal`` attention path; padded positions carry weight 0.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from kitchen.adapters.local import check_threads as _check_threads
from kitchen.adapters.local import checkpoint as ckpt
from kitchen.adapters.local.models import (
    _torch_dtype,
    atomic_publish_dir,
    base_model_id,
    canonical_name,
    load_model,
    resolve_model,
)
from kitchen.adapters.local.sampling import LocalSamplingClient
from kitchen.errors import ConfigError, KitchenError
from kitchen.ports.types import (
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
    SessionConfig,
)
from kitchen.train.seeding import get_rng_state, seed_everything, set_rng_state


def _quiet_transformers() -> None:
    """transformers' own tqdm bars (loading/writing shards) would tear the kitchen's console output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

ATTN_HINTS = ("attn", "attention")
MLP_HINTS = ("mlp", "feed_forward", "ffn")
UNEMBED_NAMES = ("lm_head", "embed_out", "output")


def _resolved(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


class LocalTrainingClient:
    """Train and sample locally (CUDA in bf16 when available, else CPU fp32)."""

    def __init__(
        self,
        threads: int | None = None,
        cache_dir: str | None = None,
        cpu_bf16_autocast: bool = False,
        checkpoint_dir: str | None = None,
        **unused: Any,
    ) -> None:
        self.threads = _check_threads(threads)  # threads=-2 is a config error, not a torch crash
        self.cache_dir = cache_dir
        self.cpu_bf16_autocast = bool(cpu_bf16_autocast)
        self.checkpoint_dir: str | None = str(checkpoint_dir) if checkpoint_dir else None
        self.ignored_kwargs = dict(unused)
        if unused:
            import logging

            logging.getLogger("kitchen.adapters.local").warning(
                "LocalTrainingClient ignores unknown options: %s", ", ".join(sorted(unused))
            )
        self.config: SessionConfig | None = None
        self.model = None
        self.tokenizer = None
        self.optimizer = None
        self.step = 0
        self.device = "cpu"
        self.dtype = None
        self.facts: dict[str, Any] = {}
        self._params: list[tuple[str, Any]] = []
        self._lora = False
        self._samplers: dict[str, LocalSamplingClient] = {}
        self._model_info: dict[str, Any] = {}
        self._vocab_size = 0
        # --- scale (micro-batching, data parallel, precision); see train_step.py / scale.py
        from kitchen.train.microbatch import MicroBatchOptions

        self.micro_opts = MicroBatchOptions()
        self._dist = None  # torch.distributed when this is one rank of several
        self._train_model = None  # the DDP wrapper (LoRA) used for training passes
        self._fsdp = False  # full fine-tuning sharded with FSDP2 fully_shard
        self._scaler = None  # fp16 GradScaler (CUDA)
        self._autocast_dtype = None
        self.resume_note: str | None = None

    # ------------------------------------------------------------------ session
    def set_checkpoint_dir(self, path: str | os.PathLike) -> None:
        """Where :meth:`save_state` writes ``<path>/<name>/`` (created on first save)."""
        self.checkpoint_dir = str(path)

    def _require_session(self) -> None:
        if self.model is None:
            raise RuntimeError("LocalTrainingClient: call start_session() first")

    def start_session(self, config: SessionConfig) -> dict[str, Any]:
        import torch

        self.config = config
        seed_everything(config.seed, torch=True)
        want = (config.device or "auto").lower()
        if want == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif want.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError("device=cuda was requested but no CUDA GPU is visible; use device=auto or cpu.")
            device = want
        elif want == "cpu":
            device = "cpu"
        else:
            raise ConfigError(f"Unknown device '{config.device}': use auto, cpu or cuda.")
        self.device = device
        dt = (config.dtype or "auto").lower()
        if dt == "auto":
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        elif dt in ("float32", "fp32"):
            dtype = torch.float32
        elif dt in ("bfloat16", "bf16"):
            dtype = torch.bfloat16
        else:
            raise ConfigError(f"Unknown dtype '{config.dtype}': use auto, float32 or bfloat16.")
        self.dtype = dtype
        if device == "cpu":
            torch.set_num_threads(self.threads or default_threads())
        from kitchen.adapters.local import scale

        plan = scale.plan_session(self, config, device, dtype)

        load_kw = dict(cache_dir=self.cache_dir, dtype=dtype, device=device,
                       revision=getattr(config, "model_revision", None), chat_template=getattr(config, "chat_template", None),
                       commit=getattr(config, "model_commit", None))
        if config.lora.rank > 0 and not plan.quantization and plan.world_size == 1:
            # LoRA never changes a base weight: share one frozen copy per process (kitchen serve
            # runs many sessions in one). QLoRA rewrites the base and DDP broadcasts into it.
            from kitchen.adapters.local import shared_base

            model, tokenizer, info = shared_base.acquire(config.base_model, **load_kw).view()
        else:
            model, tokenizer, info = load_model(config.base_model, **load_kw)  # revision + chat template
        model = scale.prepare_model(self, model, plan)  # activation checkpointing / QLoRA
        self._model_info = info
        lora = config.lora
        warnings_out: list[str] = []  # surfaced as run.warning events by InitSession
        if lora.rank and lora.rank > 0:
            import peft

            hidden = int(getattr(model.config, "hidden_size", 0) or 0)
            if hidden and lora.rank > hidden:
                warnings_out.append(
                    f"lora_rank={lora.rank} is larger than the model's hidden size ({hidden}): the adapter cannot "
                    f"have a higher rank than {hidden}, so the extra rank only costs memory and time. "
                    f"Use lora_rank <= {hidden} (or lora_rank=0 for full fine-tuning)."
                )

            targets = self._target_modules(model, lora)
            torch.manual_seed(config.seed)  # LoRA init depends on the seed only
            pcfg = peft.LoraConfig(
                r=int(lora.rank),
                lora_alpha=float(lora.alpha if lora.alpha is not None else 2 * lora.rank),
                lora_dropout=float(lora.dropout),
                target_modules=targets,
                bias="none",
                task_type="CAUSAL_LM",
            )
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tied-embedding notes when lm_head is a target
                try:
                    model = peft.get_peft_model(model, pcfg)
                except (MemoryError, RuntimeError) as exc:  # a rank too large to allocate
                    if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower() and "out of memory" not in str(exc).lower():
                        raise
                    raise ConfigError(
                        f"lora_rank={lora.rank} is too large: the adapter matrices do not fit in memory on {device} "
                        f"({str(exc).splitlines()[0][:160]}). Use a smaller lora_rank (the model's hidden size is "
                        f"{hidden or 'unknown'}; ranks of 8-64 are typical)."
                    ) from None
            self._lora = True
        else:
            if lora.rank < 0:
                raise ConfigError(f"lora.rank must be >= 0 (0 = full fine-tuning), got {lora.rank}.")
            for p in model.parameters():
                p.requires_grad_(True)
            self._lora = False
        model.config.use_cache = False
        self.model = model
        self.tokenizer = tokenizer
        emb = model.get_input_embeddings()
        self._vocab_size = int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)
        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = None
        self.step = 0
        scale.wrap_parallel(self, plan)  # DDP (LoRA) / FSDP2 (full) across ranks
        seen: set[int] = set()
        total = 0
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        trainable = sum(p.numel() for _, p in self._params)
        self.facts = {
            "model": info["model"],
            "model_source": info.get("source"),
            "model_path": info.get("path"),
            "load_seconds": info.get("load_seconds"),
            "device": device,
            "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads() if device == "cpu" else None,
            "cpu_bf16_autocast": self.cpu_bf16_autocast and device == "cpu",
            "lora_rank": int(lora.rank),
            "warnings": warnings_out,
            "trainable_params": int(trainable),
            "total_params": int(total),
            "trainable_fraction": trainable / max(total, 1),
        }
        # where the base truly came from (adapter config, model card, run.json)
        self.facts.update(base=info.get("base"), base_dtype=info.get("base_dtype"),
                          model_revision=info.get("revision"), model_commit=info.get("commit"))
        if self._lora:
            self.facts["lora_target_modules"] = sorted(targets) if isinstance(targets, list) else targets
        self.facts.update(plan.facts())
        return dict(self.facts)

    @staticmethod
    def _target_modules(model, lora) -> list[str] | str:
        import torch

        linear_names: list[str] = []
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                linear_names.append(name)
        unembed = [n for n in linear_names if n.split(".")[-1] in UNEMBED_NAMES]
        body = [n for n in linear_names if n not in unembed]
        tm = lora.target_modules
        if isinstance(tm, str) and tm != "all-linear":
            tm = [tm]
        if tm == "all-linear":
            chosen: set[str] = set()
            for n in body:
                low = n.lower()
                is_attn = any(h in low for h in ATTN_HINTS)
                is_mlp = any(h in low for h in MLP_HINTS)
                if (is_attn and lora.train_attn) or (is_mlp and lora.train_mlp) or (
                    not is_attn and not is_mlp and lora.train_attn and lora.train_mlp
                ):
                    chosen.add(n.split(".")[-1])
            targets = sorted(chosen)
        else:
            targets = [str(t) for t in tm]
        if lora.train_unembed:
            targets += sorted({n.split(".")[-1] for n in unembed} - set(targets))
        if not targets:
            raise ConfigError(
                "LoRA has nothing to train: train_mlp, train_attn and train_unembed are all off "
                "(or target_modules is empty). Enable one, or set lora.rank=0 for full fine-tuning."
            )
        return targets

    def get_tokenizer(self):
        self._require_session()
        return self.tokenizer

    # ------------------------------------------------------------------ batches
    def _autocast(self):
        import torch

        if self._autocast_dtype is not None:  # mixed_precision=bf16|fp16
            return torch.autocast(device_type=self.device.split(":")[0], dtype=self._autocast_dtype)
        if self.cpu_bf16_autocast and self.device == "cpu":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _backward(self, loss) -> None:
        """``loss.backward()``, through the fp16 GradScaler when one is active."""
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
        else:
            loss.backward()

    def _run(self, data: list[Datum], loss_fn: str, loss_fn_config, *, train: bool) -> ForwardBackwardResult:
        """One batch, in micro-batches and across ranks when configured (train_step.py)."""
        from kitchen.adapters.local.train_step import run_batch

        self._require_session()
        return run_batch(self, data, loss_fn, loss_fn_config, train=train)

    def forward_backward(
        self, data: list[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future:
        return _resolved(self._run(data, loss_fn, loss_fn_config, train=True))

    def forward(
        self, data: list[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future:
        return _resolved(self._run(data, loss_fn, loss_fn_config, train=False))

    # ------------------------------------------------------------------ optimizer
    def _make_optimizer(self, params: AdamParams):
        import torch

        tensors = [p for _, p in self._params]
        kw = dict(
            lr=params.learning_rate,
            betas=(params.beta1, params.beta2),
            eps=params.eps,
            weight_decay=params.weight_decay,
        )
        try:
            return torch.optim.AdamW(tensors, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # pragma: no cover - fused unsupported here
            return torch.optim.AdamW(tensors, **kw)

    def optim_step(self, params: AdamParams) -> Future:
        import torch

        self._require_session()
        if self.optimizer is None:
            self.optimizer = self._make_optimizer(params)
        for g in self.optimizer.param_groups:
            g["lr"] = float(params.learning_rate)
            g["betas"] = (float(params.beta1), float(params.beta2))
            g["eps"] = float(params.eps)
            g["weight_decay"] = float(params.weight_decay)
        tensors = [p for _, p in self._params]
        grads = [p.grad for p in tensors if p.grad is not None]
        if self._scaler is not None:  # fp16 loss scaling; clip the true gradients
            self._scaler.unscale_(self.optimizer)
        if params.grad_clip_norm and params.grad_clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(tensors, float(params.grad_clip_norm))
        elif grads:
            norm = torch.nn.utils.get_total_norm(grads)
        else:
            norm = torch.zeros(())
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor norm over the shards
            norm = norm.full_tensor()
        if self._scaler is not None:
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return _resolved(
            OptimStepResult(
                step=self.step,
                metrics={"grad_norm": float(norm), "learning_rate": float(params.learning_rate)},
            )
        )

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, name: str, step: int) -> CheckpointRef:
        self._require_session()
        if not self.checkpoint_dir:
            raise ConfigError(
                "The local backend has no checkpoint directory: call set_checkpoint_dir(path) "
                "(or pass checkpoint_dir=) before save_state."
            )
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ConfigError(f"Invalid checkpoint name '{name}': use a plain name like 'step_000100'.")
        from kitchen.adapters.local import scale  # FSDP2 gathers; only rank 0 writes

        names = [n for n, _ in self._params]
        weights = {n: scale.full_tensor(p.detach()) for n, p in self._params}
        opt = None
        if self.optimizer is not None:
            opt_sd = scale.full_optimizer_state(self.optimizer) if self._fsdp else self.optimizer.state_dict()
            opt = ckpt.optimizer_to_files(opt_sd, names)
        info = {
            "model": self.facts.get("model"),
            "optimizer_steps": self.step,
            "lora_rank": self.facts.get("lora_rank"),
            "trainable_params": self.facts.get("trainable_params"),
            "world_size": self._dist.get_world_size() if self._dist is not None else 1,
        }
        if not scale.writes_files():
            scale.barrier(self)
            final = Path(self.checkpoint_dir) / name
            return CheckpointRef(name=name, path=str(final.resolve()), step=int(step), kind="state")
        final = ckpt.write_state(
            Path(self.checkpoint_dir) / name, step=step, weights=weights, optimizer=opt, rng=get_rng_state(), info=info
        )
        scale.barrier(self)
        return CheckpointRef(name=name, path=str(final.resolve()), step=int(step), kind="state")

    def load_state(self, ref: CheckpointRef | str, with_optimizer: bool = True) -> None:
        import torch

        from kitchen.adapters.local import scale

        self._require_session()
        path = ref.path if isinstance(ref, CheckpointRef) else str(ref)
        state = ckpt.read_state(path, with_optimizer=with_optimizer)
        weights = state["weights"]
        mine = dict(self._params)
        if set(weights) != set(mine):
            missing = sorted(set(mine) - set(weights))[:3]
            extra = sorted(set(weights) - set(mine))[:3]
            raise KitchenError(
                f"Checkpoint {path} does not match this session's trainable parameters "
                f"(missing: {missing or 'none'}, unexpected: {extra or 'none'}). Was it saved with a "
                "different model or LoRA setting?"
            )
        with torch.no_grad():
            for n, p in self._params:
                t = weights[n]
                if t.shape != p.shape:
                    raise KitchenError(f"Checkpoint {path}: parameter {n} has shape {tuple(t.shape)}, expected {tuple(p.shape)}.")
                if hasattr(p, "device_mesh"):  # FSDP2 shard
                    p.copy_(scale.like(p, t))
                else:
                    p.copy_(t.to(p.dtype))
        for _, p in self._params:
            p.grad = None
        # --- say when the world size changed since the checkpoint
        self.resume_note = scale.world_size_note(
            state["info"].get("world_size"), self._dist.get_world_size() if self._dist is not None else 1
        )
        if with_optimizer:
            info = state["info"]
            self.step = int(info.get("optimizer_steps", state["step"]))
            if state["optimizer"] is not None:
                opt_state, meta = state["optimizer"]
                if meta.get("param_names") != [n for n, _ in self._params]:
                    raise KitchenError(f"Checkpoint {path}: optimizer state was saved for different parameters.")
                if self.optimizer is None:
                    self.optimizer = self._make_optimizer(AdamParams())
                if self._fsdp:
                    opt_state = scale.local_optimizer_state(self.optimizer, opt_state, [p for _, p in self._params])
                self.optimizer.load_state_dict(opt_state)
            else:
                self.optimizer = None
            set_rng_state(state["rng"])

    # ------------------------------------------------------------------ weights / sampling
    def _merged_copy(self):
        """A plain transformers model with the current weights (LoRA merged), frozen.

        Built from a state dict, not by deepcopy + ``merge_and_unload`` (which takes
        ~9 s for SmolLM2 on 2 cores): merged LoRA weights are new tensors; with LoRA,
        every other tensor is the frozen base tensor, shared (training never changes
        it); with full fine-tuning every tensor is cloned.
        """
        import torch

        from kitchen.adapters.local.models import clean_config, model_from_state_dict

        self._require_session()
        base = self.model.get_base_model() if self._lora else self.model
        config = clean_config(base.config)
        sd: dict[str, Any] = {}
        with torch.no_grad():
            if self._lora:
                from peft.tuners.lora import LoraLayer

                from kitchen.adapters.local.scale import dequantized, is_quantized

                merged: dict[str, Any] = {}
                quantized: set[str] = set()  # QLoRA: layers whose stored weight is packed bitsandbytes data
                for name, mod in base.named_modules():
                    if isinstance(mod, LoraLayer) and "default" in getattr(mod, "lora_A", {}):
                        layer = mod.get_base_layer()
                        w = dequantized(layer)
                        merged[f"{name}.weight"] = (w + mod.get_delta_weight("default")).to(w.dtype)
                    elif ".base_layer" not in name and is_quantized(getattr(mod, "weight", None)):
                        merged[f"{name}.weight"] = dequantized(mod)
                    else:
                        continue
                    if is_quantized(getattr(mod.get_base_layer() if isinstance(mod, LoraLayer) else mod, "weight", None)):
                        quantized.add(name)
                for k, v in base.state_dict().items():
                    if ".lora_" in k:
                        continue
                    k = k.replace(".base_layer.", ".")
                    owner = k.rsplit(".weight", 1)[0] if ".weight" in k else k.rsplit(".", 1)[0]
                    if owner in quantized and not k.endswith(".bias"):
                        continue  # packed data and its quantization state: replaced by the dequantized weight
                    sd[k] = v.detach()
                sd.update(merged)
                head = base.get_output_embeddings()
                emb = base.get_input_embeddings()
                head_w = getattr(head, "get_base_layer", lambda: head)().weight if head is not None else None
                if emb is not None and head_w is emb.weight and any(k.startswith(n) for k in merged for n in UNEMBED_NAMES):
                    # LoRA on a tied unembedding: the merged model needs its own lm_head.
                    config.tie_word_embeddings = False
                    if hasattr(config, "get_text_config"):
                        config.get_text_config().tie_word_embeddings = False
            elif self._fsdp:  # gather FSDP2 shards (a collective: every rank calls this)
                from kitchen.adapters.local.scale import full_tensor

                sd = {k: full_tensor(v.detach()).clone() for k, v in base.state_dict().items()}
            else:
                clones: dict[int, Any] = {}
                for k, v in base.state_dict().items():
                    key = id(v) if v.data_ptr() == 0 else (v.data_ptr(), v.dtype, tuple(v.shape))
                    if key not in clones:
                        clones[key] = v.detach().clone()
                    sd[k] = clones[key]
        m = model_from_state_dict(config, sd, buffers_from=base, dtype=base.dtype)
        m.config.use_cache = True
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def save_weights(self, path: str) -> str:
        """Write ``path/`` (merged model + tokenizer, plain transformers) and ``path/adapter/``."""
        self._require_session()
        _quiet_transformers()
        final = Path(path).expanduser()
        from kitchen.adapters.local import scale  # rank 0 writes the final weights

        if not scale.writes_files():
            if self._fsdp:
                self._merged_copy()  # the gather is a collective: every rank takes part
            scale.barrier(self)
            return str(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            merged = self._merged_copy()
            # saved in the base model's own dtype (e.g. bf16), not the training dtype
            base_dtype = _torch_dtype(self._model_info.get("base_dtype") or "auto")
            if merged.dtype != base_dtype:
                merged = merged.to(base_dtype)
            merged.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            del merged
            if self._lora:
                # the adapter names its TRUE base (a GGUF file + package, a hub id at a
                # commit, a local dir), never the look-alike hub id of a dequantised GGUF.
                base = self._model_info.get("base") or {"kind": "builtin", "name": self._model_info.get("model")}
                pcfg = self.model.peft_config["default"]
                old = (pcfg.base_model_name_or_path, pcfg.revision)
                pcfg.base_model_name_or_path = base_model_id(base)
                pcfg.revision = base.get("commit") if base.get("kind") == "hub" else None
                try:
                    import warnings

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        self.model.save_pretrained(str(tmp / "adapter"))
                finally:
                    pcfg.base_model_name_or_path, pcfg.revision = old
            atomic_publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            gc.collect()
        scale.barrier(self)
        return str(final)

    def sampling_client(self, base_model: str | None = None) -> LocalSamplingClient:
        import torch

        self._require_session()
        autocast = torch.bfloat16 if (self.cpu_bf16_autocast and self.device == "cpu") else None
        if base_model is None:
            return LocalSamplingClient(
                self._merged_copy(), self.tokenizer, device=self.device, autocast_dtype=autocast, name="snapshot"
            )
        key = resolve_model(base_model).name
        if key not in self._samplers:
            from kitchen.adapters.local import shared_base  # frozen base weights: one copy per process

            model, tok, _ = shared_base.acquire(base_model, cache_dir=self.cache_dir, dtype=self.dtype, device=self.device).view()
            model.config.use_cache = True
            self._samplers[key] = LocalSamplingClient(
                model, tok, device=self.device, autocast_dtype=autocast, name=canonical_name(base_model)
            )
        return self._samplers[key]

    def close(self) -> None:
        self.model = None
        self.optimizer = None
        self._params = []
        self._samplers.clear()
        gc.collect()
