"""``HFHubClient``: the HubClient port over ``huggingface_hub``.

Why a port: model resolution (``kitchen.adapters.local.models``), ``kitchen validate``
and ``push_to_hub`` all need the same three questions answered the same way: is this
repo in the local cache, can it be fetched, and where did it land (which commit).
huggingface_hub already owns the cache layout (``models--org--name/snapshots/<sha>``,
``refs/<revision>``), offline mode (``HF_HUB_OFFLINE``), ``HF_ENDPOINT``, tokens
(``HF_TOKEN`` or ``hf auth login``) and the progress bars; this class only turns its
exceptions into one-paragraph :class:`KitchenError`s that name ``hf download ID``.

Nothing here imports torch, so ``kitchen validate`` can use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kitchen.errors import BackendError
from kitchen.ports.stores import HubSnapshot

_TRUE = {"1", "true", "yes", "on"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# What a transformers model + tokenizer needs. Other formats in the same repo (GGUF,
# ONNX, TF, Flax) are skipped; pytorch ``*.bin`` weights are fetched only when a repo
# has no safetensors.
MODEL_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
BIN_PATTERNS = ("*.bin",)


def hub_offline() -> bool:
    """True when huggingface_hub is told not to use the network (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def download_hint(repo_id: str, revision: str | None = None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return f"`hf download {repo_id}{rev}`"


class HFHubClient:
    """Resolve, download and upload through ``huggingface_hub``.

    ``cache_dir``: the hub cache (default: huggingface_hub's, i.e. ``$HF_HUB_CACHE`` or
    ``$HF_HOME/hub``). ``token``: only for tests and callers that already hold one; by
    default huggingface_hub reads ``HF_TOKEN`` / its stored login itself, so a token never
    passes through kitchen's config, logs or run dir.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, token: str | None = None) -> None:
        self.cache_dir = str(cache_dir) if cache_dir else None
        self._token = token

    # ------------------------------------------------------------------ reading
    def cached(self, repo_id: str, revision: str | None = None) -> HubSnapshot | None:
        """The cached snapshot of ``repo_id@revision``, or None. Never touches the network."""
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(
                repo_id, revision=revision, cache_dir=self.cache_dir, local_files_only=True
            )
        except Exception:  # noqa: BLE001 - any miss (no refs, no snapshot, bad id) is "not cached"
            return None
        if not (Path(path) / "config.json").is_file():
            return None  # a snapshot holding only other files (e.g. a README) is not a model
        return HubSnapshot(repo_id, revision, _commit_of(path), path)

    def remote(self, repo_id: str, revision: str | None = None) -> HubSnapshot:
        """Ask the hub which commit ``revision`` is (metadata only: no file is downloaded)."""
        if hub_offline():
            raise self._missing(repo_id, revision, "HF_HUB_OFFLINE is set")
        from huggingface_hub import HfApi

        try:
            info = HfApi(token=self._token).model_info(repo_id, revision=revision)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, repo_id, revision) from None
        return HubSnapshot(repo_id, revision, getattr(info, "sha", None), None)

    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        """A local directory holding ``repo_id@revision``, downloading it when online.

        Online, huggingface_hub checks the revision and fetches what is missing, with its
        progress bars. Offline (``HF_HUB_OFFLINE=1``) or with no network, the cached copy is
        used; without one this raises a :class:`BackendError` naming ``hf download``.
        """
        return self.download(repo_id, revision).path  # type: ignore[return-value]

    def download(self, repo_id: str, revision: str | None = None) -> HubSnapshot:
        from huggingface_hub import snapshot_download

        if hub_offline():
            snap = self.cached(repo_id, revision)
            if snap is None:
                raise self._missing(repo_id, revision, "HF_HUB_OFFLINE is set")
            return snap
        try:
            path = snapshot_download(
                repo_id, revision=revision, cache_dir=self.cache_dir, token=self._token,
                allow_patterns=list(MODEL_PATTERNS),
            )
        except Exception as exc:  # noqa: BLE001
            snap = self.cached(repo_id, revision)
            if snap is not None and _is_network_error(exc):
                return snap  # no network: the cached copy is the answer
            raise self._translate(exc, repo_id, revision) from None
        if not any(Path(path).glob("*.safetensors")):
            try:  # an older repo with pytorch .bin weights only
                path = snapshot_download(repo_id, revision=revision, cache_dir=self.cache_dir, token=self._token,
                                         allow_patterns=list(BIN_PATTERNS))
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, repo_id, revision) from None
        if not (Path(path) / "config.json").is_file():
            raise BackendError(
                f"The hub repo '{repo_id}'{_at(revision)} has no config.json, so it is not a transformers "
                "model kitchen can train (GGUF-only repos: download the .gguf file and pass its path as model=)."
            )
        return HubSnapshot(repo_id, revision, _commit_of(path), path)

    # ------------------------------------------------------------------ writing
    def upload(self, local_dir: str, repo_id: str, *, private: bool | None = None,
               commit_message: str = "Upload from crucible-kitchen") -> str:
        """Create ``repo_id`` if needed and upload ``local_dir``; returns the commit URL."""
        if hub_offline():
            raise BackendError(
                f"Cannot push to '{repo_id}': HF_HUB_OFFLINE is set. Nothing was lost: {local_dir} is "
                f"intact; push it later with `hf upload {repo_id} {local_dir}` or `kitchen export ... --push {repo_id}`."
            )
        from huggingface_hub import HfApi

        api = HfApi(token=self._token)
        try:
            api.create_repo(repo_id, exist_ok=True, private=private)
            info = api.upload_folder(folder_path=local_dir, repo_id=repo_id, commit_message=commit_message)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(
                f"Pushing {local_dir} to the hub repo '{repo_id}' failed: {_short(exc)}. Nothing was lost: "
                f"{local_dir} is intact; push it later with `hf upload {repo_id} {local_dir}` once the hub is "
                "reachable and you are logged in (`hf auth login` or HF_TOKEN)."
            ) from None
        return str(getattr(info, "commit_url", None) or info)

    # ------------------------------------------------------------------ errors
    def _missing(self, repo_id: str, revision: str | None, why: str) -> BackendError:
        return BackendError(
            f"Model '{repo_id}'{_at(revision)} is not in the local Hugging Face cache"
            f"{' (' + self.cache_dir + ')' if self.cache_dir else ''} and cannot be downloaded: {why}. "
            f"Download it first with {download_hint(repo_id, revision)} on a machine with network "
            "(then copy the cache, or unset HF_HUB_OFFLINE), or point model= at a local directory."
        )

    def _translate(self, exc: Exception, repo_id: str, revision: str | None) -> BackendError:
        name = type(exc).__name__
        if name == "RevisionNotFoundError":
            return BackendError(
                f"The hub repo '{repo_id}' has no revision '{revision}'. Set model_revision= to a branch, tag "
                "or commit that exists (or leave it unset for the default branch)."
            )
        if name in ("RepositoryNotFoundError", "GatedRepoError"):
            gated = name == "GatedRepoError"
            return BackendError(
                f"The hub repo '{repo_id}' {'is gated' if gated else 'was not found'}"
                + (": accept its terms on the hub and log in" if gated else
                   " (or it is private and you are not logged in)")
                + ". Check the id, and log in with `hf auth login` or HF_TOKEN if it is private."
            )
        if _is_network_error(exc):
            return self._missing(repo_id, revision, f"the hub is unreachable ({_short(exc)})")
        return BackendError(f"Could not fetch model '{repo_id}'{_at(revision)} from the hub: {_short(exc)}.")


def _at(revision: str | None) -> str:
    return f" at revision '{revision}'" if revision else ""


def _commit_of(snapshot_path: str) -> str | None:
    name = Path(snapshot_path).name
    return name if _COMMIT.match(name) else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _is_network_error(exc: BaseException) -> bool:
    names = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout", "ReadTimeout",
             "ConnectionError", "Timeout", "ProxyError", "NetworkError", "TimeoutException"}
    seen = 0
    while exc is not None and seen < 8:
        if type(exc).__name__ in names or isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


__all__ = ["HFHubClient", "HubSnapshot", "download_hint", "hub_offline"]
