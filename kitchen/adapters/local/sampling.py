"""A frozen sampler over a local model, with a KV cache and batched samples.

Semantics (documented choices):

* ``temperature == 0`` is greedy decoding; otherwise logits are divided by the
  temperature, then ``top_k`` (``-1``/``0`` = off) and ``top_p`` (nucleus) filter them.
* The logprob reported for each sampled token is the **raw model logprob**
  (``log_softmax`` of the unscaled, unfiltered logits, i.e. temperature 1), the same
  number :meth:`LocalSamplingClient.compute_logprobs` gives for that token.
* Generation stops at the tokenizer's / generation config's EOS token(s), at any token
  id in ``stop`` and after any string in ``stop`` appears in the generated text. The
  stopping token is kept in ``tokens`` (``stop_reason="stop"``); otherwise generation
  ends after ``max_tokens`` (``stop_reason="length"``).
* ``seed`` makes a call reproducible (a private ``torch.Generator``). Without a seed the
  global torch RNG is used, which the training checkpoints save and restore.
* The ``num_samples`` continuations are decoded as one batch: the prompt is prefilled
  once and its KV cache repeated; finished rows are dropped from the batch.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from typing import Any, Sequence

from kitchen.errors import KitchenError
from kitchen.ports.futures import failed, resolved
from kitchen.ports.types import SampledSequence, SampleResult, SamplingParams


def eos_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return ids


def filter_logits(logits, temperature: float, top_k: int, top_p: float):
    """Scaled and filtered logits (filtered entries set to -inf); ``logits`` is [N, V] fp32."""
    import torch

    x = logits / temperature
    vocab = x.shape[-1]
    if top_k and 0 < top_k < vocab:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        cum = probs.cumsum(-1)
        remove = (cum - probs) > top_p  # keep the smallest prefix whose mass reaches top_p
        remove[:, 0] = False
        sorted_x = sorted_x.masked_fill(remove, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, idx, sorted_x)
    return x


def cache_keyword(model: Any) -> str:
    """The forward() keyword of the KV cache: ``cache`` on transformers that renamed it, else
    ``past_key_values`` (which those newer versions still take, with a FutureWarning on every
    local run). A PEFT wrapper forwards ``**kwargs``, so the wrapped model's signature decides."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


class LocalSamplingClient:
    """Samples from a frozen model; every call returns an already-resolved Future."""

    def __init__(self, model, tokenizer, *, device: str = "cpu", autocast_dtype=None, name: str = "",
                 loss_chunk_tokens: int | None = None) -> None:
        self.model = model
        self.loss_chunk_tokens = loss_chunk_tokens  # compute_logprobs: logits this many tokens at a time (None: one pass)
        self._loss_head = None
        self.tokenizer = tokenizer
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.name = name
        self._eos = eos_ids(tokenizer, model)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ helpers
    def _ctx(self):
        import torch

        if self.autocast_dtype is not None:
            return torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def get_tokenizer(self):
        return self.tokenizer

    # ------------------------------------------------------------------ API
    def sample(self, prompt: Sequence[int], num_samples: int, params: SamplingParams) -> Future:
        try:
            return resolved(self._sample(list(prompt), int(num_samples), params))
        except KitchenError as e:
            return failed(e)

    def compute_logprobs(self, tokens: Sequence[int]) -> Future:
        return resolved(self._compute_logprobs(list(tokens)))

    def compute_logprobs_batch(self, seqs: Sequence[Sequence[int]]) -> list[list[float | None]]:
        """Synchronous batched variant (right padding), handy for DPO references."""
        import torch

        seqs = [list(s) for s in seqs]
        if not seqs:
            return []
        T = max(len(s) for s in seqs)
        if T < 2:  # nothing predicts a first token
            return [[None] * len(s) for s in seqs]
        pad = 0
        ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs], device=self.device)
        if self._loss_head is None:  # checked once per sampler model (its logits must be head(hidden) to chunk)
            from kitchen.adapters.local.loss_head import plan_loss_head

            self._loss_head = plan_loss_head(self.model, self.loss_chunk_tokens, device=self.device)
        with torch.inference_mode():
            batch = {"input_ids": ids[:, :-1], "target_tokens": ids[:, 1:]}  # causal: position t scores token t+1
            lp = self._loss_head.target_logprobs(self.model, self.model, batch, self._ctx).cpu()
        return [[None] + lp[i, : len(s) - 1].tolist() for i, s in enumerate(seqs)]

    def _compute_logprobs(self, tokens: list[int]) -> list[float | None]:
        if not tokens:
            return []
        return self.compute_logprobs_batch([tokens])[0]

    def _sample(self, prompt: list[int], n: int, params: SamplingParams) -> SampleResult:
        import torch

        if not prompt:
            raise KitchenError("Cannot sample from an empty prompt.")
        if n < 1:
            return SampleResult([])
        stop_ids = set(self._eos)
        stop_strs: list[str] = []
        for s in params.stop or ():
            if isinstance(s, str):
                if s:
                    stop_strs.append(s)
            else:
                stop_ids.add(int(s))
        window = (max(len(s) for s in stop_strs) + 8) if stop_strs else 0
        temperature = float(params.temperature)
        greedy = temperature <= 0.0
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(params.seed))

        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        reasons = ["length"] * n
        active = list(range(n))  # row r of the batch is sample active[r]
        max_tokens = int(params.max_tokens)
        if max_tokens <= 0:
            return SampleResult([SampledSequence([], [], "length") for _ in range(n)])

        with torch.inference_mode(), self._ctx():
            ids = torch.tensor([prompt], device=self.device)
            cache_kw = cache_keyword(self.model)
            out = self.model(input_ids=ids, use_cache=True)
            past = getattr(out, cache_kw)
            logits = out.logits[:, -1, :].float()
            if n > 1:
                past.batch_repeat_interleave(n)
                logits = logits.expand(n, -1)
            for step in range(max_tokens):
                logp = torch.log_softmax(logits, dim=-1)
                if greedy:
                    nxt = logits.argmax(dim=-1)
                else:
                    x = filter_logits(logits, temperature, int(params.top_k), float(params.top_p))
                    nxt = torch.multinomial(x.softmax(-1), 1, generator=gen)[:, 0]
                tok_lp = logp.gather(1, nxt[:, None])[:, 0]
                nxt_l = nxt.tolist()
                lp_l = tok_lp.tolist()
                keep: list[int] = []
                for r, i in enumerate(active):
                    t = nxt_l[r]
                    tokens[i].append(t)
                    logps[i].append(lp_l[r])
                    stopped = t in stop_ids
                    if not stopped and stop_strs:
                        tail = self.tokenizer.decode(tokens[i][-window:], skip_special_tokens=False)
                        stopped = any(s in tail for s in stop_strs)
                    if stopped:
                        reasons[i] = "stop"
                    else:
                        keep.append(r)
                if not keep or step == max_tokens - 1:
                    break
                if len(keep) < len(active):
                    idx = torch.tensor(keep, device=self.device)
                    past.batch_select_indices(idx)
                    nxt = nxt[idx]
                    active = [active[r] for r in keep]
                out = self.model(input_ids=nxt[:, None], use_cache=True, **{cache_kw: past})
                past = getattr(out, cache_kw)
                logits = out.logits[:, -1, :].float()
        return SampleResult([SampledSequence(tokens[i], logps[i], reasons[i]) for i in range(n)])
