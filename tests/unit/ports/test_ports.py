"""Every port has a noop adapter that satisfies it; the noop training backend is deterministic by seed."""

from kitchen.adapters.blobs import FsspecBlobStore, LocalBlobStore
from kitchen.adapters.hf_datasets import HFDatasetStore
from kitchen.adapters.noop import NoopBlobStore, NoopHubClient, NoopMetricsStore, NoopTrainingClient
from kitchen.ports.stores import BlobStore, DatasetStore, HubClient, MetricsStore
from kitchen.ports.training import SamplingClient, TrainingClient
from kitchen.ports.types import AdamParams, Datum, SamplingParams, SessionConfig


def test_noop_adapters_implement_their_ports():
    assert isinstance(NoopTrainingClient(), TrainingClient)
    assert isinstance(NoopTrainingClient().sampling_client(), SamplingClient)
    assert isinstance(NoopBlobStore(), BlobStore)
    assert isinstance(NoopHubClient(), HubClient)
    from kitchen.adapters.hf_hub import HFHubClient

    assert isinstance(HFHubClient(), HubClient)
    assert isinstance(NoopMetricsStore(), MetricsStore)
    assert isinstance(LocalBlobStore("/tmp"), BlobStore)
    assert isinstance(HFDatasetStore(), DatasetStore)


def losses(seed: int, lr: float, steps: int = 5) -> list[float]:
    client = NoopTrainingClient()
    client.start_session(SessionConfig(base_model="noop", seed=seed))
    datum = Datum([1, 2, 3], {"target_tokens": [2, 3, 4], "weights": [0.0, 1.0, 1.0]})
    out = []
    for _ in range(steps):
        out.append(client.forward_backward([datum]).result().loss)
        client.optim_step(AdamParams(learning_rate=lr)).result()
    return out


def test_noop_loss_falls_is_reproducible_and_depends_on_lr():
    a = losses(0, 1e-4)
    assert a == losses(0, 1e-4)
    assert a != losses(1, 1e-4)
    assert a[-1] < a[0]
    assert losses(0, 3e-4)[-1] < a[-1]


def test_noop_sampler_depends_on_the_whole_prompt():
    sampler = NoopTrainingClient().sampling_client()
    params = SamplingParams(max_tokens=8, seed=0)
    x = sampler.sample([1] * 40 + [5], 1, params).result().sequences[0].tokens
    y = sampler.sample([2] * 40 + [5], 1, params).result().sequences[0].tokens
    assert x != y and x == sampler.sample([1] * 40 + [5], 1, params).result().sequences[0].tokens


def test_noop_blob_and_metrics_stores_round_trip():
    blobs = NoopBlobStore()
    blobs.put("a/b", b"x")
    assert blobs.get("a/b") == b"x" and blobs.exists("a/b") and blobs.list("a/") == ["a/b"]
    metrics = NoopMetricsStore()
    metrics.record(1, {"loss": 2.0})
    assert metrics.read() == [{"step": 1, "loss": 2.0}]


def test_local_and_fsspec_blob_stores_round_trip_files(tmp_path):
    """The two real BlobStores: a plain folder, and fsspec (here its in-memory filesystem)."""
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\x00\x01" * 1000)
    for store in (LocalBlobStore(tmp_path / "bucket"), FsspecBlobStore("memory://kitchen-test-bucket")):
        url = store.put_file(src, "run/checkpoints/step_000002/weights.bin")
        assert url.endswith("run/checkpoints/step_000002/weights.bin")
        store.put("run/index.jsonl", b"{}\n")
        assert store.exists("run/index.jsonl") and not store.exists("run/nope")
        assert store.list("run/") == ["run/checkpoints/step_000002/weights.bin", "run/index.jsonl"]
        out = tmp_path / "back.bin"
        store.get_file("run/checkpoints/step_000002/weights.bin", out)
        assert out.read_bytes() == src.read_bytes() and store.get("run/index.jsonl") == b"{}\n"


def test_local_blob_store_refuses_keys_outside_its_root(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="outside"):
        LocalBlobStore(tmp_path / "bucket").put("../escape", b"x")
