"""The local backend's ``forward_backward``: micro-batches, packed rows and data-parallel ranks.

Tinker's ``forward_backward`` sums the loss over its datums, so the batch's gradient is
the sum of its parts' gradients. This module runs a batch as

1. this rank's contiguous share of the datums (data parallel; the gradient all-reduce of
   DDP / FSDP2 *averages*, so each rank scales its loss by the world size to keep sums);
2. split into micro-batches by datum count and/or token budget
   (:func:`kitchen.train.microbatch.plan_micro_batches`), each its own forward and
   backward, gradients accumulating in ``.grad`` (only the last one synchronises ranks);
3. each micro-batch as right-padded rows, or with ``padding_free`` as one packed row
   whose position ids restart per sequence (transformers then builds a block-diagonal
   causal mask, so sequences do not attend to each other).

The targets' logprobs come from the session's loss head
(:mod:`kitchen.adapters.local.loss_head`): by default a chunk of ``loss_chunk_tokens``
tokens' logits at a time, so no [tokens x vocabulary] tensor is alive; with
``loss_chunk_tokens=null`` one micro-batch's full logits at a time. Reported numbers (loss sum,
token counts, RL extras) are summed over micro-batches and ranks in one tensor, and every
rank returns every datum's logprobs, in the caller's order.

Everything a pass needs from the session (model, trainable wrapper, micro-batch options,
precision, ranks) comes in one :class:`~kitchen.adapters.local.session.TrainSession`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from kitchen.errors import DataError
from kitchen.ports.types import Datum, ForwardBackwardResult
from kitchen.train.losses import REQUIRED_INPUTS, check_loss_fn, compute_loss
from kitchen.train.microbatch import MicroBatchOptions, plan_micro_batches, rank_share

if TYPE_CHECKING:
    from kitchen.adapters.local.session import TrainSession


def check_batch(data: list[Datum], loss_fn: str, vocab: int) -> tuple[list[str], list[int]]:
    """Validate the whole batch once (same answer on every rank): the loss keys and lengths."""
    if not data:
        raise DataError("forward_backward got an empty batch.")
    need = REQUIRED_INPUTS[loss_fn]
    lengths = [len(d.model_input) for d in data]
    if max(lengths) == 0:
        raise DataError("Every datum in the batch has an empty model_input.")
    keys = list(need)
    if loss_fn != "cross_entropy" and any("weights" in d.loss_fn_inputs for d in data):
        keys.append("weights")
    lo, hi = vocab, -1
    for i, d in enumerate(data):
        L = lengths[i]
        for k in keys:
            v = d.loss_fn_inputs.get(k)
            if v is None:
                if k == "weights":
                    continue
                raise DataError(
                    f"Datum {i} has no loss_fn_inputs['{k}'], which loss_fn='{loss_fn}' needs (it needs {', '.join(need)})."
                )
            if len(v) != L:
                raise DataError(f"Datum {i}: loss_fn_inputs['{k}'] has {len(v)} entries but model_input has {L} tokens.")
        for name, seq in (("model_input", d.model_input), ("target_tokens", d.loss_fn_inputs["target_tokens"])):
            if seq:
                a, b = min(seq), max(seq)
                if a < 0 or b >= vocab:
                    raise DataError(
                        f"A token id in {name} is outside the model's vocabulary (0..{vocab - 1}): got {a if a < 0 else b}."
                        " Was the data tokenised for a different model?"
                    )
                lo, hi = min(lo, a), max(hi, b)
    return keys, lengths


def collate(data: list[Datum], keys: list[str], device: str, padding_free: bool) -> tuple[dict[str, Any], list[tuple[int, int, int]]]:
    """Tensors for one micro-batch, and where each datum's positions are: (row, start, length)."""
    import torch

    lengths = [len(d.model_input) for d in data]

    def values(d: Datum, k: str, L: int) -> list[Any]:
        v = d.loss_fn_inputs.get(k)
        return [1.0] * L if v is None else list(v)

    if padding_free:
        ids: list[int] = []
        pos: list[int] = []
        cols: dict[str, list[Any]] = {k: [] for k in keys}
        where = []
        for d, L in zip(data, lengths):
            where.append((0, len(ids), L))
            ids.extend(d.model_input)
            pos.extend(range(L))
            for k in keys:
                cols[k].extend(values(d, k, L))
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long, device=device),
            "position_ids": torch.tensor([pos], dtype=torch.long, device=device),
        }
        for k in keys:
            batch[k] = torch.tensor([cols[k]], dtype=torch.long if k == "target_tokens" else torch.float32, device=device)
        return batch, where
    T = max(lengths)
    rows: dict[str, list[list[Any]]] = {k: [] for k in keys}
    id_rows = []
    for d, L in zip(data, lengths):
        pad = T - L
        id_rows.append(list(d.model_input) + [0] * pad)
        for k in keys:
            rows[k].append(values(d, k, L) + [0] * pad)
    batch = {"input_ids": torch.tensor(id_rows, dtype=torch.long, device=device)}
    for k in keys:
        batch[k] = torch.tensor(rows[k], dtype=torch.long if k == "target_tokens" else torch.float32, device=device)
    return batch, [(i, 0, L) for i, L in enumerate(lengths)]


def _sync_context(train_model, last: bool, fsdp: bool):
    """Synchronise gradients across ranks only on the last micro-batch of a step."""
    if fsdp:
        train_model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if not last and hasattr(train_model, "no_sync"):
        return train_model.no_sync()
    return contextlib.nullcontext()


def run_batch(session: TrainSession, data: list[Datum], loss_fn: str, loss_fn_config, *,
              train: bool) -> ForwardBackwardResult:
    """One ``forward_backward`` (``train=True``) or ``forward`` of ``data`` on ``session``."""
    import torch

    check_loss_fn(loss_fn)
    keys, all_lengths = check_batch(data, loss_fn, session.vocab_size)
    opts: MicroBatchOptions = session.micro
    dist = session.parallel.dist
    world = dist.get_world_size() if dist is not None else 1
    share = rank_share(len(data), dist.get_rank(), world) if dist is not None else range(len(data))
    mine = [data[i] for i in share]
    groups = plan_micro_batches([all_lengths[i] for i in share], opts)
    fsdp = session.parallel.fsdp
    if fsdp:  # every rank must run the same number of forwards (each one all-gathers weights)
        count = torch.tensor([len(groups)], dtype=torch.long)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        groups += [[] for _ in range(int(count.item()) - len(groups))]
    model = session.model
    train_model = session.pass_model(train)
    model.train(train)
    scale = float(world)  # DDP/FSDP average gradients over ranks; the Tinker loss is a sum
    totals = None
    extra_keys: list[str] = []
    logprobs: list[list[float]] = [[] for _ in mine]
    grad = torch.enable_grad() if train else torch.no_grad()
    for gi, group in enumerate(groups):
        last = gi == len(groups) - 1
        with grad, (_sync_context(train_model, last, fsdp) if train and dist is not None else contextlib.nullcontext()):
            if not group:  # FSDP filler pass: same collectives, zero gradient
                ids = torch.zeros((1, 1), dtype=torch.long, device=session.device)
                out = train_model(input_ids=ids, use_cache=False).logits
                if train:
                    (out.float().sum() * 0.0).backward()
                continue
            sub = [mine[i] for i in group]
            batch, where = collate(sub, keys, session.device, opts.padding_free)
            target_lp = session.loss_head.target_logprobs(train_model, model, batch, session.precision.autocast)
            out = compute_loss(loss_fn, target_lp, batch, loss_fn_config)
            if train:
                loss = out.loss * scale if scale != 1.0 else out.loss
                session.precision.backward(loss)
        extra_keys = list(out.extra)
        n = out.num_tokens.float()
        vec = torch.stack([out.loss.detach().float(), n] + [out.extra[k].float() * n.clamp_min(1.0) for k in extra_keys]
                          + [n.clamp_min(1.0) for _ in extra_keys[:1]])
        totals = vec if totals is None else totals + vec
        lp_cpu = target_lp.detach().to("cpu")
        for i, (row, start, L) in zip(group, where):
            logprobs[i] = lp_cpu[row, start : start + L].tolist()
        del target_lp, out, batch
    if dist is not None:
        if totals is None:  # pragma: no cover - every rank has at least one datum (checked batch sizes)
            totals = torch.zeros(2 + len(extra_keys) + min(1, len(extra_keys)))
        totals = totals.to(session.device)
        dist.all_reduce(totals)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, logprobs)
        logprobs = [lp for part in gathered for lp in part]
    stats = totals.tolist()
    loss_sum, ntok = stats[0], stats[1]
    metrics = {
        "loss:sum": loss_sum,
        "num_tokens": ntok,
        "num_sequences": float(len(data)),
        "num_input_tokens": float(sum(all_lengths)),
    }
    if extra_keys:
        denom = max(stats[-1], 1.0)
        for k, v in zip(extra_keys, stats[2 : 2 + len(extra_keys)]):
            metrics[k] = v / denom
    if len(groups) > 1:
        metrics["micro_batches"] = float(len(groups))
    mean = loss_sum / ntok if ntok > 0 else 0.0
    metrics["loss:mean"] = mean
    return ForwardBackwardResult(loss=mean, logprobs=logprobs, metrics=metrics)
