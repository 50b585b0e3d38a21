"""The HubClient port over ``huggingface_hub``: model snapshots in, run outputs out."""

from kitchen.adapters.hf_hub.client import HFHubClient, HubSnapshot, hub_offline

__all__ = ["HFHubClient", "HubSnapshot", "hub_offline"]
