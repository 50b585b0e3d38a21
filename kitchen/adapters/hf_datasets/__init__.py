"""Dataset store over local files and the (offline) Hugging Face datasets cache."""

from kitchen.adapters.hf_datasets.store import HFDatasetStore

__all__ = ["HFDatasetStore"]
