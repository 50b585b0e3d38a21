"""Kitchen's one cache root: where tokenized datasets and converted models are kept.

``$KITCHEN_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/crucible-kitchen``, else
``~/.cache/crucible-kitchen``. The data path (tokenized entries) and the local backend
(models converted from GGUF) both put their files under it, so one variable moves or
isolates all of kitchen's caches (the tests set it per session). The Hugging Face caches
(``HF_HOME``, ``HF_HUB_CACHE``) are the hub libraries' own and stay theirs.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root; an explicit ``cache_dir`` wins over the environment."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("KITCHEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crucible-kitchen"
