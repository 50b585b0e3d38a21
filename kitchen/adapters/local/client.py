"""``LocalTrainingClient``: the TrainingClient port over torch + transformers + peft.

Made by the adapter catalog from the recipe's ``adapters.training`` options
(``_target_: kitchen.adapters.local.LocalTrainingClient``), which are the optional kwargs ``threads`` (CPU threads; default: every core this process may use),
``cache_dir`` (model cache root; default ``$KITCHEN_CACHE_DIR`` / XDG cache),
``cpu_bf16_autocast`` (bf16 autocast for the CPU forward/backward; weights and optimizer
stay fp32) and ``checkpoint_dir`` (root for :meth:`save_state`; also settable later with
:meth:`set_checkpoint_dir` or by assigning ``client.checkpoint_dir``).

Computation is synchronous: every method that returns a Future returns a resolved one.

The client is the port; its parts are modules of their own that exchange typed state
and never read its fields: :mod:`.scale` plans the session (``ScalePlan``, ``Parallel``),
:mod:`.lora` makes the model trainable (``Trainable``), and the started session is one
:class:`~kitchen.adapters.local.session.TrainSession` handed to :mod:`.train_step`,
:mod:`.merge`, :mod:`.checkpoint` and :mod:`.snapshots`.

Notes on exactness: ``forward_backward`` uses right padding and *no* attention mask.
For a causal LM that is exact (a real token only attends to earlier, real tokens) and it
keeps the fast ``is_causal`` attention path; padded positions carry weight 0.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from kitchen.adapters.local import checkpoint as ckpt
from kitchen.adapters.local.models.load import load_model, torch_dtype
from kitchen.adapters.local.models.provenance import base_model_id
from kitchen.adapters.local.models.resolve import canonical_name, resolve_model
from kitchen.adapters.local.sampling import LocalSamplingClient
from kitchen.adapters.local.session import TrainSession
from kitchen.adapters.local.threads import check_threads, default_threads
from kitchen.errors import ConfigError
from kitchen.io.atomic import atomic_publish_dir
from kitchen.ports.futures import resolved
from kitchen.ports.types import (
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardResult,
    OptimStepResult,
    SessionConfig,
    require_optimizer,
)
from kitchen.train.seeding import get_rng_state, seed_everything, set_rng_state


def _quiet_transformers() -> None:
    """transformers' own tqdm bars (loading/writing shards) would tear the kitchen's console output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


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
        self.threads = check_threads(threads)  # threads=-2 is a config error, not a torch crash
        self.cache_dir = cache_dir
        self.cpu_bf16_autocast = bool(cpu_bf16_autocast)
        self.checkpoint_dir: str | None = str(checkpoint_dir) if checkpoint_dir else None
        if unused:
            import logging

            logging.getLogger("kitchen.adapters.local").warning(
                "LocalTrainingClient ignores unknown options: %s", ", ".join(sorted(unused))
            )
        self.config: SessionConfig | None = None
        self.optimizer = None
        self.step = 0
        self.device = "cpu"
        self.dtype = None
        self.facts: dict[str, Any] = {}
        self.resume_note: str | None = None  # set by load_state when the world size changed
        self.resume_facts: dict[str, Any] = {}  # set by load_state: session facts the checkpoint changed (auto budget)
        self._session: TrainSession | None = None  # the started session (start_session .. close)
        self._samplers: dict[str, LocalSamplingClient] = {}

    # ------------------------------------------------------------------ the started session
    @property
    def model(self) -> Any:
        """The session's model (PEFT-wrapped with LoRA); None before start_session / after close."""
        return self._session.model if self._session is not None else None

    @model.setter
    def model(self, value: Any) -> None:
        if self._session is None:
            raise RuntimeError("LocalTrainingClient: call start_session() first")
        self._session.model = value

    @property
    def tokenizer(self) -> Any:
        return self._session.tokenizer if self._session is not None else None

    @property
    def _params(self) -> list[tuple[str, Any]]:
        """The trainable (name, parameter) pairs ([] without a session)."""
        return self._session.params if self._session is not None else []

    def train_session(self) -> TrainSession:
        """The started session's typed state, for the parts that run on it (snapshots, merges)."""
        self._require_session()
        assert self._session is not None
        return self._session

    # ------------------------------------------------------------------ session
    def set_checkpoint_dir(self, path: str | os.PathLike) -> None:
        """Where :meth:`save_state` writes ``<path>/<name>/`` (created on first save)."""
        self.checkpoint_dir = str(path)

    def _require_session(self) -> None:
        if self.model is None:
            raise RuntimeError("LocalTrainingClient: call start_session() first")

    def start_session(self, config: SessionConfig) -> dict[str, Any]:
        import torch

        require_optimizer(config.optimizer, "local")
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
        from kitchen.adapters.local import lora as lora_setup
        from kitchen.adapters.local import scale
        from kitchen.adapters.local.loss_head import plan_loss_head
        from kitchen.train.chunked_logprobs import check_chunk_tokens

        plan = scale.plan_session(config, device, dtype, threads=self.threads, cpu_bf16_autocast=self.cpu_bf16_autocast)

        load_kw = dict(cache_dir=self.cache_dir, dtype=dtype, device=device,
                       revision=config.model_revision, chat_template=config.chat_template, commit=config.model_commit)
        if config.lora.rank > 0 and not plan.quantization and plan.world_size == 1:
            # LoRA never changes a base weight: share one frozen copy per process (kitchen serve
            # runs many sessions in one). QLoRA rewrites the base and DDP broadcasts into it.
            from kitchen.adapters.local import shared_base

            model, tokenizer, info = shared_base.acquire(config.base_model, **load_kw).view()
        else:
            model, tokenizer, info = load_model(config.base_model, **load_kw)  # revision + chat template
        model = scale.prepare_model(model, plan, device)  # activation checkpointing / QLoRA
        lora = config.lora
        trainable = lora_setup.make_trainable(model, lora, seed=config.seed, device=device)
        model = trainable.model
        model.config.use_cache = False
        emb = model.get_input_embeddings()
        vocab_size = int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)
        self.optimizer = None
        self.step = 0
        parallel = scale.wrap_parallel(model, plan, lora=trainable.lora, device=device)  # DDP (LoRA) / FSDP2 (full)
        # the trainable list is taken after wrapping: FSDP2 replaces parameters by DTensor shards
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        loss_head = plan_loss_head(model, check_chunk_tokens(config.loss_chunk_tokens), fsdp=parallel.fsdp, device=device,
                                   fused=config.fused_loss)
        if plan.auto_budget:  # max_tokens_per_micro_batch=auto: from the loaded model and what is free now
            import dataclasses

            from kitchen.adapters.local import budget as auto_budget

            full_ft = 0 if trainable.lora else sum(p.numel() for _, p in params)
            chosen = auto_budget.choose(model, device=device, vocab=vocab_size, chunk_tokens=loss_head.chunk_tokens,
                                        max_length=int(config.max_length), full_finetune_params=full_ft)
            plan.micro = dataclasses.replace(plan.micro, max_tokens=chosen.tokens)
            plan.budget_note = chosen.note()
        self._session = TrainSession(model=model, tokenizer=tokenizer, device=device, dtype=dtype, lora=trainable.lora,
                                     params=params, vocab_size=vocab_size, model_info=info, plan=plan, parallel=parallel,
                                     loss_head=loss_head)
        seen: set[int] = set()
        total = 0
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        n_trainable = sum(p.numel() for _, p in params)
        self.facts = {
            "model": info["model"],
            "model_source": info.get("source"),
            "model_path": info.get("path"),
            "load_seconds": info.get("load_seconds"),
            "device": device,
            "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads() if device == "cpu" else None,
            "cpu_bf16_autocast": plan.precision.name == "bf16" and plan.precision.autocast_dtype is not None and device == "cpu",
            "lora_rank": int(lora.rank),
            "warnings": trainable.warnings,
            "trainable_params": int(n_trainable),
            "total_params": int(total),
            "trainable_fraction": n_trainable / max(total, 1),
        }
        # where the base truly came from (adapter config, model card, run.json)
        self.facts.update(base=info.get("base"), base_dtype=info.get("base_dtype"),
                          model_revision=info.get("revision"), model_commit=info.get("commit"))
        if trainable.lora:
            self.facts["lora_target_modules"] = sorted(trainable.targets or [])
        self.facts.update(plan.facts())
        self.facts.update(loss_head.facts())
        return dict(self.facts)

    def get_tokenizer(self):
        self._require_session()
        return self.tokenizer

    # ------------------------------------------------------------------ batches
    def _run(self, data: list[Datum], loss_fn: str, loss_fn_config, *, train: bool) -> ForwardBackwardResult:
        """One batch, in micro-batches and across ranks when configured (train_step.py)."""
        from kitchen.adapters.local.train_step import run_batch

        return run_batch(self.train_session(), data, loss_fn, loss_fn_config, train=train)

    def forward_backward(
        self, data: list[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future:
        return resolved(self._run(data, loss_fn, loss_fn_config, train=True))

    def forward(
        self, data: list[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future:
        return resolved(self._run(data, loss_fn, loss_fn_config, train=False))

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

        session = self.train_session()
        scaler = session.precision.scaler  # fp16 GradScaler (CUDA), else None
        if self.optimizer is None:
            self.optimizer = self._make_optimizer(params)
        for g in self.optimizer.param_groups:
            g["lr"] = float(params.learning_rate)
            g["betas"] = (float(params.beta1), float(params.beta2))
            g["eps"] = float(params.eps)
            g["weight_decay"] = float(params.weight_decay)
        tensors = [p for _, p in session.params]
        grads = [p.grad for p in tensors if p.grad is not None]
        if scaler is not None:  # fp16 loss scaling; clip the true gradients
            scaler.unscale_(self.optimizer)
        if params.grad_clip_norm and params.grad_clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(tensors, float(params.grad_clip_norm))
        elif grads:
            norm = torch.nn.utils.get_total_norm(grads)
        else:
            norm = torch.zeros(())
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor norm over the shards
            norm = norm.full_tensor()
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return resolved(
            OptimStepResult(
                step=self.step,
                metrics={"grad_norm": float(norm), "learning_rate": float(params.learning_rate)},
            )
        )

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, name: str, step: int) -> CheckpointRef:
        session = self.train_session()
        if not self.checkpoint_dir:
            raise ConfigError(
                "The local backend has no checkpoint directory: call set_checkpoint_dir(path) "
                "(or pass checkpoint_dir=) before save_state."
            )
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ConfigError(f"Invalid checkpoint name '{name}': use a plain name like 'step_000100'.")
        from kitchen.adapters.local import scale  # FSDP2 gathers; only rank 0 writes

        weights, opt = ckpt.trainable_tensors(session, self.optimizer)
        info = {
            "model": self.facts.get("model"),
            "optimizer_steps": self.step,
            "lora_rank": self.facts.get("lora_rank"),
            "trainable_params": self.facts.get("trainable_params"),
            "world_size": session.parallel.world_size,
            "precision": session.precision.name,  # a resume in another precision is refused unless forced
            "max_tokens_per_micro_batch": session.micro.max_tokens,
            "auto_budget": session.plan.auto_budget,  # a resume reuses this budget: the same micro-batches
        }
        if not scale.writes_files():
            session.parallel.barrier()
            final = Path(self.checkpoint_dir) / name
            return CheckpointRef(name=name, path=str(final.resolve()), step=int(step), kind="state")
        final = ckpt.write_state(
            Path(self.checkpoint_dir) / name, step=step, weights=weights, optimizer=opt, rng=get_rng_state(), info=info
        )
        session.parallel.barrier()
        return CheckpointRef(name=name, path=str(final.resolve()), step=int(step), kind="state")

    def load_state(self, ref: CheckpointRef | str, with_optimizer: bool = True) -> None:
        from kitchen.adapters.local import scale

        session = self.train_session()
        path = ref.path if isinstance(ref, CheckpointRef) else str(ref)
        state = ckpt.read_state(path, with_optimizer=with_optimizer)
        saved_info = state["info"] or {}
        scale.check_resume_precision(saved_info.get("precision"), session.precision.name,
                                     force=bool(self.config.force_precision), path=path)
        ckpt.restore_weights(session, state["weights"], path)
        saved_budget = saved_info.get("max_tokens_per_micro_batch")
        if session.plan.auto_budget and saved_info.get("auto_budget") and saved_budget:
            import dataclasses  # the same micro-batches as before the resume, so the same float rounding

            session.plan.micro = dataclasses.replace(session.plan.micro, max_tokens=int(saved_budget))
            session.plan.budget_note = f"auto: {int(saved_budget)} tokens per pass, as the checkpoint recorded"
            self.facts.update(session.plan.facts())
            self.resume_facts = {"max_tokens_per_micro_batch": int(saved_budget),
                                 "micro_batch_budget": session.plan.budget_note}
        # --- say when the world size changed since the checkpoint
        self.resume_note = scale.world_size_note(state["info"].get("world_size"), session.parallel.world_size)
        if with_optimizer:
            info = state["info"]
            self.step = int(info.get("optimizer_steps", state["step"]))
            if state["optimizer"] is not None:
                opt_state, meta = state["optimizer"]
                opt_state = ckpt.optimizer_state_for(session, opt_state, meta, path)
                if self.optimizer is None:
                    self.optimizer = self._make_optimizer(AdamParams())
                self.optimizer.load_state_dict(opt_state)
            else:
                self.optimizer = None
            set_rng_state(state["rng"])

    # ------------------------------------------------------------------ weights / sampling
    def _merged_copy(self):
        """A plain transformers model with the current weights (LoRA merged), frozen (see merge.py)."""
        from kitchen.adapters.local.merge import merged_copy

        return merged_copy(self.train_session())

    def save_weights(self, path: str) -> str:
        """Write ``path/`` (merged model + tokenizer, plain transformers) and ``path/adapter/``."""
        session = self.train_session()
        _quiet_transformers()
        final = Path(path).expanduser()
        from kitchen.adapters.local import scale  # rank 0 writes the final weights

        if not scale.writes_files():
            if session.parallel.fsdp:
                self._merged_copy()  # the gather is a collective: every rank takes part
            session.parallel.barrier()
            return str(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        info = session.model_info
        try:
            merged = self._merged_copy()
            # saved in the base model's own dtype (e.g. bf16), not the training dtype
            base_dtype = torch_dtype(info.get("base_dtype") or "auto")
            if merged.dtype != base_dtype:
                merged = merged.to(base_dtype)
            merged.save_pretrained(str(tmp))
            session.tokenizer.save_pretrained(str(tmp))
            del merged
            if session.lora:
                # the adapter names its TRUE base (a GGUF file + package, a hub id at a
                # commit, a local dir), never the look-alike hub id of a dequantised GGUF.
                base = info.get("base") or {"kind": "builtin", "name": info.get("model")}
                pcfg = session.model.peft_config["default"]
                old = (pcfg.base_model_name_or_path, pcfg.revision)
                pcfg.base_model_name_or_path = base_model_id(base)
                pcfg.revision = base.get("commit") if base.get("kind") == "hub" else None
                try:
                    import warnings

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        session.model.save_pretrained(str(tmp / "adapter"))
                finally:
                    pcfg.base_model_name_or_path, pcfg.revision = old
            atomic_publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            gc.collect()
        session.parallel.barrier()
        return str(final)

    def sampling_client(self, base_model: str | None = None) -> LocalSamplingClient:
        session = self.train_session()
        autocast = session.sampling_autocast()
        if base_model is None:
            return LocalSamplingClient(
                self._merged_copy(), session.tokenizer, device=self.device, autocast_dtype=autocast, name="snapshot",
                loss_chunk_tokens=session.loss_head.chunk_tokens,
            )
        key = resolve_model(base_model).name
        if key not in self._samplers:
            from kitchen.adapters.local import shared_base  # frozen base weights: one copy per process

            model, tok, _ = shared_base.acquire(base_model, cache_dir=self.cache_dir, dtype=self.dtype, device=self.device).view()
            model.config.use_cache = True
            self._samplers[key] = LocalSamplingClient(
                model, tok, device=self.device, autocast_dtype=autocast, name=canonical_name(base_model),
                loss_chunk_tokens=session.loss_head.chunk_tokens,
            )
        return self._samplers[key]

    def close(self) -> None:
        self._session = None
        self.optimizer = None
        self._samplers.clear()
        gc.collect()
