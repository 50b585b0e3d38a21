"""``kitchen resume DIR key=value...``: the saved config plus the user's changes, checked.

A resume reads back the run's own ``config.yaml``. Anything wrong there or in the
overrides must be one paragraph naming it: a config.yaml that is missing, unreadable
or not a mapping, and an override without ``=`` (``max_steps`` alone once turned
max_steps into null and silently extended a finished run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kitchen.errors import ConfigError, RunDirError


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``key=value`` strings as a nested mapping, values parsed as YAML scalars."""
    from omegaconf import OmegaConf

    cleaned = []
    for item in overrides:
        key, eq, value = item.partition("=")
        key = key.strip().removeprefix("+")  # +key=value adds a key; merging does that anyway
        if not eq or not key or key.startswith((".", "+", "~")) or key.endswith(".") or ".." in key:
            raise ConfigError(
                f"Could not parse the override '{item}' of `kitchen resume`: it must be key=value or +key=value "
                "(e.g. max_steps=200); a key without '=' or with an empty name is not allowed."
            )
        cleaned.append(f"{key}={value}")
    try:
        cfg = OmegaConf.from_dotlist(cleaned)
        data = OmegaConf.to_container(cfg, resolve=False)
    except Exception as exc:  # noqa: BLE001 - omegaconf's grammar errors, translated
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"Could not parse the overrides of `kitchen resume` ({' '.join(overrides)}): {first}") from None
    assert isinstance(data, dict)
    return data


def resume_config(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The config to resume ``run_dir`` with (resume=true, its own run_dir)."""
    import yaml
    from omegaconf import OmegaConf

    from kitchen.config.compose import to_container

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise RunDirError(f"{run_dir} has no config.yaml, so it is not a kitchen run directory. Pass the run_dir of an earlier `kitchen run`.")
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"Cannot read {config}: {exc}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise RunDirError(f"{config} is not valid YAML{where}, so the run cannot be resumed from it. "
                          "Restore it from a copy, or start a new run.") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{config} holds a {type(data).__name__}, not the mapping of settings a run writes, "
                          "so the run cannot be resumed from it. Restore it from a copy, or start a new run.")
    data.pop("resume_from", None)  # a one-shot choice of the attempt that wrote this config, not of the next one
    changes = parse_overrides(overrides)
    try:
        merged = OmegaConf.merge(OmegaConf.create(data), OmegaConf.create(changes))
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"Could not apply the overrides to {config}: {first}") from None
    out = to_container(merged)
    out.update(run_dir=str(run_dir), resume=True, overwrite=False)
    return out


__all__ = ["parse_overrides", "resume_config"]
