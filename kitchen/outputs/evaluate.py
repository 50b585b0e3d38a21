"""``kitchen eval``: lm-evaluation-harness on a run's weights or on any model kitchen loads.

The weights come from kitchen's own loader, the one ``kitchen sample`` uses: a run's
``final/``, a checkpoint (``--step N``, LoRA applied) or its base model (``--base``, at
the commit the run resolved); or a model name (a hub id, a local directory, the embedded
GGUF default, ``tiny-llama``). They are scored by lm-eval's own ``HFLM``, so the numbers
are the ones ``lm_eval --model hf`` reports for the same weights.

For a run dir the full results (with standard errors and the task configs' versions) are
written to ``RUN_DIR/evals/lm_eval-<final|step_N|base>.json``; ``--output`` writes them
anywhere, and is how a bare model's results are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from kitchen.errors import ConfigError
from kitchen.io.atomic import atomic_write_text


@dataclass
class EvalRun:
    label: str  # what was scored, e.g. "runs/x final"
    results: dict[str, Any]  # lm-eval's results (results, versions, n-shot, configs)
    metrics: dict[str, float]  # lm_eval/<task>/<metric>
    written: Path | None  # where the results JSON went


def evaluate_weights(target: str | Path, tasks: Sequence[str], *, step: int | None = None, base: bool = False,
                     limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int = 8,
                     output: Path | None = None) -> EvalRun:
    from kitchen.evaluators.lm_eval import LMEval, evaluate, metrics_of

    where = "kitchen eval --tasks"
    LMEval.check_options(tasks=list(tasks), limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, where=where)
    is_run = (Path(target).expanduser() / "config.yaml").is_file()
    if not is_run and (step is not None or base):
        raise ConfigError(f"--step and --base choose weights of a run directory; {target} is a model name or a "
                          "directory without a run's config.yaml.")
    model, tokenizer, label, tag = _load(target, is_run, step, base)
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device),
              max_length=getattr(model.config, "max_position_embeddings", None))
    results = evaluate(lm, tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, where=where)
    payload = {"model": label, "tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot,
               "results": results.get("results"), "n-shot": results.get("n-shot"), "versions": results.get("versions"),
               "lm_eval_version": _version()}
    written = output or (Path(target).expanduser() / "evals" / f"lm_eval-{tag}.json" if is_run else None)
    if written is not None:
        Path(written).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(written), json.dumps(payload, indent=2, default=str) + "\n")
    return EvalRun(label, results, metrics_of(results), written)


def _load(target: str | Path, is_run: bool, step: int | None, base: bool) -> tuple[Any, Any, str, str]:
    """``(model, tokenizer, label, file tag)``: a run's weights or a named model, ready to score."""
    if is_run:
        from kitchen.outputs.generate import load

        loaded = load(target, step=step, base=base)
        tag = "base" if base else (f"step_{step}" if step is not None else "final")
        return loaded.model, loaded.tokenizer, loaded.label, tag
    import torch

    from kitchen.adapters.local.models import load_model

    cuda = torch.cuda.is_available()
    model, tokenizer, _ = load_model(str(target), device="cuda" if cuda else "cpu",
                                     dtype="bfloat16" if cuda else "float32")
    return model, tokenizer, str(target), "model"


def _version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


def table(run: EvalRun) -> str:
    """lm-eval's own results table (the one its CLI prints)."""
    from lm_eval.utils import make_table

    return make_table(run.results)
