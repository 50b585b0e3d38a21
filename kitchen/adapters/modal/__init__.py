"""Modal backend: kitchen's own trainer (`kitchen serve`) in a Modal GPU sandbox, driven by the Tinker adapter."""

from kitchen.adapters.modal.client import ModalTrainingClient

__all__ = ["ModalTrainingClient"]
