"""``kitchen sample`` and ``kitchen chat``: use a trained model.

Both load a run's final weights, any checkpoint (``--step N``) or the run's base model
(``--base``, at the commit the run resolved), render prompts with the model's own chat
template (the run's ``chat_template=`` override included) and sample with the local
backend's sampler semantics (temperature 0 = greedy, top_p, top_k, seed).

``sample`` reads a JSONL file whose lines are ``{"messages": [...]}``, ``{"prompt":
"text" | [messages]}`` or a bare JSON string, and writes one line per prompt in the same
order. ``chat`` is a line-based REPL that streams tokens as they are generated; it works
the same with a terminal or piped stdin.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from kitchen.errors import DataError, KitchenError
from kitchen.io.atomic import atomic_open


@dataclass
class Options:
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    num_samples: int = 1


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    label: str  # what was loaded, e.g. "runs/x final", "runs/x step 4", "runs/x base (tiny-llama)"
    eos: set[int]


def load(run_dir: str | Path, *, step: int | None = None, base: bool = False) -> LoadedModel:
    """The weights to sample from. Every refusal (not a run dir, a remote run, no such step)
    comes before torch is imported, so a typo is answered in a moment, not after seconds of imports."""
    from kitchen.outputs.run_weights import find_checkpoint, open_run, require_local

    rw = open_run(run_dir)
    if base and step is not None:
        raise KitchenError("--base and --step exclude each other: --base is the model before any training.")
    has_final = step is None and (rw.rundir.final / "config.json").is_file()
    if not base:
        require_local(rw)
        if not has_final:
            step = _last_step(rw) if step is None else step
            find_checkpoint(rw, step)

    import torch

    from kitchen.adapters.local.models import load_model
    from kitchen.adapters.local.sampling import eos_ids
    from kitchen.outputs.run_weights import base_model_kwargs, open_checkpoint

    cuda = torch.cuda.is_available()  # as training does: bf16 on a GPU, fp32 on the CPU
    where = dict(device="cuda" if cuda else "cpu", dtype="bfloat16" if cuda else "float32")
    if base:
        model, tok, _ = load_model(str(rw.spec["model"]), **base_model_kwargs(rw), **where)
        label = f"{rw.run_dir} base ({rw.spec['model']})"
    elif has_final:
        model, tok, _ = load_model(str(rw.rundir.final), **where)
        label = f"{rw.run_dir} final"
    else:
        assert step is not None
        client = open_checkpoint(rw, step)
        from kitchen.adapters.local.merge import merged_copy

        model = merged_copy(client.train_session())  # plain transformers model with this checkpoint's weights
        tok = client.tokenizer
        label = f"{rw.run_dir} step {step}"
    model.config.use_cache = True
    model.eval()
    return LoadedModel(model, tok, label, eos_ids(tok, model))


def _last_step(rw: Any) -> int:
    from kitchen.outputs.run_weights import checkpoint_steps

    steps = checkpoint_steps(rw)
    if not steps:
        raise KitchenError(f"{rw.run_dir} has neither final weights nor checkpoints to load.")
    return steps[-1]


def as_messages(row: Any, where: str) -> list[dict[str, str]]:
    """A prompt line as chat messages: messages, a prompt string/list, or a bare string."""
    if isinstance(row, str):
        return [{"role": "user", "content": row}]
    if isinstance(row, dict):
        value = row.get("messages", row.get("prompt"))
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        ):
            return [{"role": m["role"], "content": m["content"]} for m in value]
        if value is not None:
            raise DataError(f"{where}: 'messages'/'prompt' must be a string or a list of {{role, content}} strings.")
        raise DataError(f"{where}: no 'messages' or 'prompt' field (keys seen: {', '.join(sorted(row)) or 'none'}); "
                        "a line is {\"messages\": [...]}, {\"prompt\": \"...\"} or a JSON string.")
    raise DataError(f"{where}: a prompt line must be a JSON object or string, got {type(row).__name__}.")


def read_prompts(path: str | Path) -> list[tuple[Any, list[dict[str, str]]]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"--prompts {path} does not exist.")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}, line {n}: not valid JSON ({e.msg}).") from None
        rows.append((row, as_messages(row, f"{p}, line {n}")))
    if not rows:
        raise DataError(f"--prompts {p} has no prompts.")
    return rows


def render(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise KitchenError("This model's tokenizer has no chat template; set chat_template=PATH.jinja when training.")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def _quiet() -> None:
    """transformers' deprecation chatter (logger and FutureWarning) would mix into the user's output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def _params(opts: Options, seed: int | None):
    from kitchen.ports.types import SamplingParams

    return SamplingParams(max_tokens=opts.max_tokens, temperature=opts.temperature, top_p=opts.top_p,
                          top_k=opts.top_k, seed=seed)


def _decode(tokenizer, tokens: list[int], eos: set[int]) -> str:
    if tokens and tokens[-1] in eos:
        tokens = tokens[:-1]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def sample_file(run_dir: str | Path, prompts: str | Path, out: str | Path, *, step: int | None = None,
                base: bool = False, opts: Options | None = None) -> int:
    """Generate for every prompt line; returns the number of prompts written."""
    opts = opts or Options()
    rows = read_prompts(prompts)
    out = Path(out).expanduser()
    if out.is_dir():
        raise KitchenError(f"--out {out} is a directory; give a .jsonl file path.")
    lm = load(run_dir, step=step, base=base)
    _quiet()
    from kitchen.adapters.local.sampling import LocalSamplingClient

    sampler = LocalSamplingClient(lm.model, lm.tokenizer, device=str(lm.model.device), name=lm.label)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as fh:  # a failed or interrupted generation leaves no half file
        for i, (row, messages) in enumerate(rows):
            ids = render(lm.tokenizer, messages)
            seed = None if opts.seed is None else opts.seed + i
            result = sampler.sample(ids, opts.num_samples, _params(opts, seed)).result()
            texts = [_decode(lm.tokenizer, s.tokens, lm.eos) for s in result.sequences]
            record: dict[str, Any] = {"index": i, "prompt": row, "completion": texts[0],
                                      "stop_reason": result.sequences[0].stop_reason,
                                      "num_tokens": len(result.sequences[0].tokens), "model": lm.label}
            if opts.num_samples > 1:
                record["completions"] = texts
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(rows)


def chat(run_dir: str | Path, *, step: int | None = None, base: bool = False, opts: Options | None = None,
         system: str | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """An interactive chat: each user line gets a streamed reply. ``/reset`` clears, ``/exit`` or EOF ends."""
    opts = opts or Options()
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty()
    lm = load(run_dir, step=step, base=base)
    _quiet()
    import torch
    from transformers import TextStreamer

    write: Callable[[str], None] = lambda s: (stdout.write(s), stdout.flush())  # noqa: E731

    class _Stream(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            write(text + ("\n" if stream_end else ""))

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    write(f"chatting with {lm.label}; /reset clears the history, /exit (or Ctrl-D) quits\n")
    if opts.seed is not None:
        torch.manual_seed(opts.seed)
    while True:
        if interactive:
            write("you> ")
        line = stdin.readline()
        if not line:
            write("\n" if interactive else "")
            return
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit"):
            return
        if text.strip() == "/reset":
            history = history[:1] if system else []
            write("(history cleared)\n")
            continue
        history.append({"role": "user", "content": text})
        ids = torch.tensor([render(lm.tokenizer, history)], device=lm.model.device)
        write("assistant> ")
        streamer = _Stream(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = dict(max_new_tokens=opts.max_tokens, streamer=streamer,
                                      eos_token_id=sorted(lm.eos) or None, pad_token_id=lm.tokenizer.pad_token_id)
        if opts.temperature > 0:
            kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p,
                          top_k=opts.top_k if opts.top_k > 0 else 0)
        else:
            kwargs.update(do_sample=False)
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        reply = _decode(lm.tokenizer, out[0, ids.shape[1]:].tolist(), lm.eos)
        history.append({"role": "assistant", "content": reply})
