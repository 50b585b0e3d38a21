"""A finished (or interrupted) local-backend run's weights, as models you can use.

``kitchen export``, ``sample`` and ``chat`` all ask the same question: give me the
weights of RUN_DIR at step N (or its ``final/``, or its base model). A checkpoint holds
only the trainable tensors (LoRA or all weights), so it is opened the way training
would: a session on the run's own base model (``config.yaml``: model, revision, chat
template, LoRA settings), then ``load_state`` without the optimizer. Everything else
(merging, dtype, adapter configs) is the training client's ``save_weights`` and
``sampling_client``, so exported and sampled weights are the trained ones, bit for bit.

A run's weights are here when its adapters declared ``local_checkpoints``
(``conf/adapters/local.yaml`` does); :func:`require_local` refuses any other run before
anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kitchen.errors import KitchenError, RunDirError
from kitchen.runs.rundir import RunDir


@dataclass
class RunWeights:
    run_dir: Path
    spec: dict[str, Any]  # the run's config.yaml (the validated spec)
    info: dict[str, Any]  # its run.json

    @property
    def rundir(self) -> RunDir:
        return RunDir(self.run_dir)


def open_run(run_dir: str | Path) -> RunWeights:
    path = Path(run_dir).expanduser()
    config = path / "config.yaml"
    if not config.is_file():
        raise RunDirError(
            f"'{run_dir}' is not a kitchen run directory (no config.yaml). Pass the run_dir of an earlier `kitchen run`."
        )
    spec = yaml.safe_load(config.read_text()) or {}
    info = RunDir(path).read_info() or {}
    return RunWeights(path, spec, info)


def is_local_run(rw: RunWeights) -> bool:
    """Whether the run's adapters declared ``local_checkpoints`` (its weights are files here
    that the local backend loads). Adapters that declare nothing: no.

    A run dir written before adapters declared it records no such key; for one of those,
    the bundled adapters group the run chose answers, if the run trained with that group's
    own training class (a recipe that swapped in another class gets no).
    """
    adapters = rw.spec.get("adapters") or {}
    if "local_checkpoints" in adapters:
        return adapters["local_checkpoints"] is True
    group = _bundled_adapters(str(adapters.get("name", "")))
    recorded = (adapters.get("training") or {}).get("_target_")
    same_class = recorded is not None and recorded == (group.get("training") or {}).get("_target_")
    return same_class and group.get("local_checkpoints") is True


def _bundled_adapters(name: str) -> dict[str, Any]:
    """The bundled ``conf/adapters/NAME.yaml`` as written ({} when there is none)."""
    from kitchen.config.recipes import bundled_conf_dir

    folder = bundled_conf_dir() / "adapters"
    path = folder / f"{name}.yaml"
    if not name or path.parent != folder or not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def checkpoint_steps(rw: RunWeights) -> list[int]:
    return sorted({int(r["step"]) for r in rw.rundir.list_checkpoints() if "step" in r})


def find_checkpoint(rw: RunWeights, step: int) -> str:
    """The directory of the checkpoint at ``step`` (an index line whose files exist)."""
    for record in reversed(rw.rundir.list_checkpoints()):
        if int(record.get("step", -1)) != int(step):
            continue
        for candidate in (Path(record.get("path", "")), rw.rundir.checkpoints / str(record.get("name", ""))):
            if candidate.name and (candidate / "manifest.json").is_file():
                return str(candidate)
        raise KitchenError(f"The checkpoint for step {step} of {rw.run_dir} is indexed but its files are gone.")
    steps = checkpoint_steps(rw)
    raise KitchenError(
        f"{rw.run_dir} has no checkpoint at step {step}; "
        + (f"its checkpoints are at steps {', '.join(map(str, steps))}." if steps else "it has no checkpoints at all.")
        + " Checkpoints are written every save_every steps and at the end of a run."
    )


def require_local(rw: RunWeights) -> None:
    """Refuse a run whose weights live on a remote backend, before anything heavy is imported."""
    if not is_local_run(rw):
        name = (rw.spec.get("adapters") or {}).get("name", "?")
        raise KitchenError(
            f"{rw.run_dir} was trained with adapters={name}, whose weights live on that backend; "
            "export, sample and chat read local-backend runs (adapters=local)."
        )


def session_config(rw: RunWeights):
    """The SessionConfig the run trained with (from its config.yaml)."""
    from kitchen.ports.types import LoraConfig, SessionConfig

    s = rw.spec
    lora = LoraConfig(
        rank=int(s.get("lora_rank", 16)), alpha=s.get("lora_alpha"), dropout=float(s.get("lora_dropout", 0.0)),
        target_modules=s.get("lora_targets", "all-linear"), train_mlp=bool(s.get("train_mlp", True)),
        train_attn=bool(s.get("train_attn", True)), train_unembed=bool(s.get("train_unembed", False)),
    )
    return SessionConfig(
        base_model=str(s["model"]), lora=lora, seed=int(s.get("seed", 0)), dtype=str(s.get("dtype", "auto")),
        device=str(s.get("device", "auto")), max_length=int(s.get("max_length", 512)),
        model_revision=_pinned_revision(rw), chat_template=s.get("chat_template"),
        # the precision it trained in: a checkpoint refuses to load into another (an fp32 run's
        # step N, opened with precision=auto on a CPU with bf16, would be refused)
        precision=str(s.get("precision", "auto")), force_precision=bool(s.get("force_precision", False)),
    )


def _pinned_revision(rw: RunWeights) -> str | None:
    """The commit the run resolved (so a moved branch cannot change the base under a checkpoint)."""
    return rw.info.get("model_commit") or rw.spec.get("model_revision")


def open_checkpoint(rw: RunWeights, step: int):
    """A LocalTrainingClient holding the run's weights at ``step`` (optimizer not loaded)."""
    from kitchen.adapters.local.client import LocalTrainingClient

    require_local(rw)
    path = find_checkpoint(rw, step)
    training = dict((rw.spec.get("adapters") or {}).get("training") or {})
    client = LocalTrainingClient(threads=training.get("threads"), cache_dir=training.get("cache_dir"))
    client.start_session(session_config(rw))
    client.load_state(path, with_optimizer=False)
    return client


def base_model_kwargs(rw: RunWeights) -> dict[str, Any]:
    return {"revision": _pinned_revision(rw), "chat_template": rw.spec.get("chat_template")}


def metrics_at(rw: RunWeights, step: int | None) -> dict[str, float]:
    """Final metrics for the final weights; for a checkpoint, the last logged values up to its step."""
    if step is None:
        return dict(rw.info.get("final_metrics") or {})
    from kitchen.telemetry.metrics_store import read_metrics

    out: dict[str, float] = {}
    path = rw.run_dir / "metrics.jsonl"
    if path.is_file():
        for row in read_metrics(path, dedupe=True):
            if int(row.get("step", 0) or 0) <= step:
                split = row.get("split")
                for k, v in row.items():
                    if k not in ("step", "split", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                        out[f"{split}/{k}" if split else k] = v
    return out
