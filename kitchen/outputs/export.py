"""``kitchen export RUN_DIR [--step N] --out DIR [--merge] [--push REPO_ID]``.

Writes a run's weights in the two formats other tools load with no kitchen code: a
PEFT adapter dir (``PeftModel.from_pretrained(base, DIR)``) or a merged transformers
dir (``AutoModelForCausalLM.from_pretrained(DIR)``), each with a model card. Without
``--step`` it exports the run's ``final/``; with it, that checkpoint (reopened on the
run's own base model, then saved by the same ``save_weights`` as ``final/``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kitchen.errors import KitchenError


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KitchenError(f"--out {out} already exists and is not an empty directory; pick a new path (nothing was written).")


def _base_gguf(rw) -> Path | None:
    """The GGUF file the run's base model came from (SmolLM2's embedded one, a ``.gguf`` path), if any."""
    from kitchen.adapters.local.models.resolve import resolve_model

    try:
        res = resolve_model(str(rw.spec.get("model", "")))
    except KitchenError:
        return None
    return Path(res.path) if res.kind in ("smollm2", "gguf") and res.path else None


def export(run_dir: str | Path, out: str | Path, *, step: int | None = None, merge: bool = False,
           push: str | None = None, fmt: str | None = None, quant: str = "f16") -> Path:
    """``fmt``: adapter (default) | merged (same as ``merge=True``) | gguf (one file at ``out``)."""
    fmt = (fmt or ("merged" if merge else "adapter")).strip().lower()
    if fmt not in ("adapter", "merged", "gguf"):
        from kitchen.errors import ConfigError

        raise ConfigError(f"--format {fmt!r} is not an export format; use adapter, merged or gguf.")
    if fmt == "gguf":
        from kitchen.outputs.gguf_export import check_quant

        quant = check_quant(quant)
        if push:
            from kitchen.errors import ConfigError

            raise ConfigError("--push uploads an exported directory; it does not apply to --format gguf.")
    merge = fmt != "adapter"
    from kitchen.io.atomic import atomic_publish_dir
    from kitchen.outputs.model_card import write_cards
    from kitchen.outputs.run_weights import find_checkpoint, metrics_at, open_checkpoint, open_run, require_local

    rw = open_run(run_dir)
    require_local(rw)  # a noop or Tinker run has no weights here: say so before any temp dir is made
    if step is not None:
        find_checkpoint(rw, step)
    out = Path(out).expanduser()
    if fmt == "gguf":
        if out.exists():
            raise KitchenError(f"--out {out} already exists; pick a new file path for the GGUF (nothing was written).")
    else:
        _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        if step is None:
            final = rw.rundir.final
            if not (final / "config.json").is_file():
                raise KitchenError(
                    f"{rw.run_dir} has no final weights (final/config.json); export a checkpoint with --step N "
                    f"(see {rw.rundir.index})."
                )
            source = work / "weights"
            shutil.copytree(final, source)
        else:
            client = open_checkpoint(rw, step)
            try:
                source = Path(client.save_weights(str(work / "weights")))
            finally:
                client.close()
        if fmt == "gguf":
            return _publish_gguf(rw, source, out, work, quant)
        if merge:
            shutil.rmtree(source / "adapter", ignore_errors=True)
            picked = source
        else:
            picked = source / "adapter"
            if not (picked / "adapter_config.json").is_file():
                raise KitchenError(
                    f"{rw.run_dir} was trained without LoRA (lora_rank=0), so there is no adapter to export; "
                    "use --merge for the full weights."
                )
        base = (rw.info.get("model_base") or None)
        write_cards(picked, spec=rw.spec, base=base, metrics=metrics_at(rw, step),
                    data_stats=rw.info.get("data_stats"), step=step if step is not None else rw.info.get("step"))
        for leftover in picked.glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        if out.exists():
            out.rmdir()
        atomic_publish_dir(picked, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if push:
        from kitchen.outputs.publish import push as push_dir

        push_dir(str(out), push)
    return out


def _publish_gguf(rw, source: Path, out: Path, work: Path, quant: str) -> Path:
    """Write ``out`` (GGUF) and ``out``.Modelfile next to it, each renamed into place."""
    import os

    from kitchen.outputs.gguf_export import modelfile_text, write_gguf

    tmp = work / out.name
    write_gguf(source, tmp, quant=quant, base_gguf=_base_gguf(rw), name=f"kitchen {rw.run_dir.name}")
    template = None
    cfg = source / "tokenizer_config.json"
    if cfg.is_file():
        import json

        template = json.loads(cfg.read_text()).get("chat_template")
    if template is None and (source / "chat_template.jinja").is_file():
        template = (source / "chat_template.jinja").read_text()
    modelfile = out.with_name(out.name + ".Modelfile")
    (work / "Modelfile").write_text(modelfile_text(out.name, template))
    os.replace(tmp, out)
    os.replace(work / "Modelfile", modelfile)
    return out
