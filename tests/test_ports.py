"""Every port has a noop adapter that satisfies it; the noop training backend is deterministic by seed."""

from kitchen.adapters.hf_datasets import HFDatasetStore
from kitchen.adapters.noop import (
    NoopBlobStore,
    NoopEmbeddingClient,
    NoopHubClient,
    NoopMetricsStore,
    NoopTrainingClient,
    NoopVectorStore,
)
from kitchen.ports.stores import BlobStore, DatasetStore, EmbeddingClient, HubClient, MetricsStore, VectorStore
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
    assert isinstance(NoopEmbeddingClient(), EmbeddingClient)
    assert isinstance(NoopVectorStore(), VectorStore)
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


def test_noop_vector_store_and_embeddings_find_the_nearest_text():
    emb, store = NoopEmbeddingClient(), NoopVectorStore()
    texts = ["tomato soup", "pancakes", "risotto"]
    store.add(texts, emb.embed(texts))
    assert store.query(emb.embed(["pancakes"])[0], k=1)[0][0] == "pancakes"


def test_noop_blob_and_metrics_stores_round_trip():
    blobs = NoopBlobStore()
    blobs.put("a/b", b"x")
    assert blobs.get("a/b") == b"x" and blobs.exists("a/b") and blobs.list("a/") == ["a/b"]
    metrics = NoopMetricsStore()
    metrics.record(1, {"loss": 2.0})
    assert metrics.read() == [{"step": 1, "loss": 2.0}]
