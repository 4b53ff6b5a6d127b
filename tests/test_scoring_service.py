"""The scoring service's logic over real gRPC on 127.0.0.1, with the fake backend and the in-memory
store injected (no models, no Milvus): rankings must equal numpy ``theta . Phi`` of the fake encoder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from couturier.services.client import check_health, get_status, product_batches
from couturier.services.common.images import encode_png, to_model_input
from couturier.services.common.models import ITEM_ENCODER
from couturier.services.common.server import ServiceHost
from couturier.v1 import catalogue_pb2, common_pb2, scoring_pb2, scoring_pb2_grpc
from support.fakes import FakeInferenceBackend, InMemoryVectorStore, write_user_table
from support.hosts import assert_serving, injected_host

N_PRODUCTS = 12
CATEGORIES = ("tops", "shoes", "bags")
COLOURS = ("red", "blue")
USERS = ("u1", "u2", "u3")
PURCHASED = {"u1": ["p00", "p03"]}


def catalogue(seed: int = 0) -> dict[str, tuple[np.ndarray, common_pb2.Product]]:
    """Product id -> (RGB uint8 8x8 image, product): distinct random images, categories and colours in turn."""
    rng = np.random.default_rng(seed)
    return {
        f"p{i:02d}": (
            rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
            common_pb2.Product(product_id=f"p{i:02d}", category=CATEGORIES[i % 3], colour=COLOURS[i % 2]),
        )
        for i in range(N_PRODUCTS)
    }


class Scoring:
    """A started scoring host over the fakes, its stub, the catalogue and the numpy truth."""

    def __init__(
        self,
        host: ServiceHost,
        backend: FakeInferenceBackend,
        store: InMemoryVectorStore,
        channel: grpc.aio.Channel,
        theta: np.ndarray,
        item_mean: np.ndarray,
    ) -> None:
        self.host, self.backend, self.store = host, backend, store
        self.stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        self.products = catalogue()
        self.theta = dict(zip(USERS, theta, strict=True))
        self.item_mean = item_mean
        self.fold_in_scale = float(np.median(np.linalg.norm(theta, axis=1)))

    def phi(self, image: np.ndarray) -> np.ndarray:
        """The fake item encoder's vector of an RGB image (what the service must compute)."""
        return self.backend.nets("1").item_encoder(to_model_input([image], self.backend.dims.image_size))[0]

    def ranking(self, theta: np.ndarray, ids: list[str] | None = None) -> list[tuple[str, float]]:
        chosen = {pid: image for pid, (image, _) in self.products.items() if ids is None or pid in ids}
        scores = {pid: float(self.phi(image) @ theta) for pid, image in chosen.items()}
        return sorted(scores.items(), key=lambda kv: -kv[1])

    async def index(self) -> catalogue_pb2.IndexProductsResponse:
        pairs = [(product, encode_png(image)) for image, product in self.products.values()]
        return await self.stub.IndexProducts(iter(list(product_batches(pairs, batch_size=5))))


@pytest.fixture
async def scoring(
    tmp_path: Path, fake_backend: FakeInferenceBackend, memory_store: InMemoryVectorStore
) -> AsyncIterator[Scoring]:
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(len(USERS), fake_backend.dims.item_dim)).astype(np.float32)
    item_mean = rng.normal(0, 0.1, fake_backend.dims.item_dim).astype(np.float32)
    write_user_table(tmp_path / "users", "1", USERS, theta, purchased=PURCHASED, item_mean=item_mean)
    host = injected_host("scoring", backend=fake_backend, store=memory_store, user_vectors_dir=str(tmp_path / "users"))
    await host.start()
    try:
        await assert_serving(host, timeout_s=5)
        async with grpc.aio.insecure_channel(host.address) as channel:
            yield Scoring(host, fake_backend, memory_store, channel, theta, item_mean)
    finally:
        await host.stop(grace_s=0)
    assert fake_backend.closed and memory_store.closed  # the service closes what it was given


def scored(products: list[common_pb2.ScoredProduct]) -> list[tuple[str, float]]:
    return [(p.product.product_id, p.score) for p in products]


def assert_same_ranking(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [pid for pid, _ in got] == [pid for pid, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5, atol=1e-5)


async def test_indexing_stores_the_fake_encoders_vectors(scoring: Scoring) -> None:
    indexed = await scoring.index()
    assert (indexed.upserted, indexed.total) == (N_PRODUCTS, N_PRODUCTS)
    assert indexed.encoder == common_pb2.ModelVersion(name=ITEM_ENCODER, version="1")
    assert scoring.backend.calls[ITEM_ENCODER] >= 3  # three batches encoded (plus probes)
    space = next(iter(scoring.store._collections.values())).space
    assert (space.collection, space.metric, space.dim) == ("item_encoder_v1", "IP", scoring.backend.dims.item_dim)
    stored = await scoring.store.get(space, list(scoring.products))
    for pid, (image, product) in scoring.products.items():
        np.testing.assert_allclose(stored[pid].vector, scoring.phi(image), rtol=1e-5, atol=1e-6)
        assert (stored[pid].category, stored[pid].colour) == (product.category, product.colour)
    stats = await scoring.stub.GetIndexStats(catalogue_pb2.GetIndexStatsRequest())
    assert stats.products == N_PRODUCTS and dict(stats.per_category) == dict.fromkeys(CATEGORIES, 4)
    assert list(stats.indexed_versions) == ["1"]


async def test_recommend_ranks_by_theta_dot_phi_and_excludes_purchases(scoring: Scoring) -> None:
    await scoring.index()
    encodes = scoring.backend.calls[ITEM_ENCODER]
    reply = await scoring.stub.Recommend(scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u2"), k=5))
    assert_same_ranking(scored(reply.products), scoring.ranking(scoring.theta["u2"])[:5])
    assert reply.model.version == "1" and not reply.folded_in
    assert scoring.backend.calls[ITEM_ENCODER] == encodes  # searched the stored vectors, encoded nothing

    everything = scoring.ranking(scoring.theta["u1"])
    default = await scoring.stub.Recommend(
        scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=N_PRODUCTS)
    )
    assert_same_ranking(scored(default.products), [hit for hit in everything if hit[0] not in PURCHASED["u1"]])
    kept = await scoring.stub.Recommend(
        scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=N_PRODUCTS, include_purchased=True)
    )
    assert_same_ranking(scored(kept.products), everything)
    shoes = await scoring.stub.Recommend(
        scoring_pb2.RecommendRequest(
            user=common_pb2.UserRef(user_id="u1"),
            k=N_PRODUCTS,
            categories=["shoes"],
            include_purchased=True,
            exclude_product_ids=["p01"],
        )
    )
    expected = [hit for hit in everything if scoring.products[hit[0]][1].category == "shoes" and hit[0] != "p01"]
    assert_same_ranking(scored(shoes.products), expected)
    assert {p.product.category for p in shoes.products} == {"shoes"}


async def test_score_items_by_id_and_by_image_for_a_group(scoring: Scoring) -> None:
    await scoring.index()
    image, _ = scoring.products["p05"]
    group = common_pb2.Audience(group=common_pb2.UserGroup(users=[common_pb2.UserRef(user_id=u) for u in ("u1", "u3")]))
    request = scoring_pb2.ScoreItemsRequest(
        audience=group,
        items=[
            common_pb2.ItemSource(product_id="p07"),
            common_pb2.ItemSource(image=common_pb2.ImagePayload(data=encode_png(image))),
        ],
        include_per_user_scores=True,
    )
    reply = await scoring.stub.ScoreItems(request)
    for item, pid in zip(reply.scores, ("p07", "p05"), strict=True):
        per_user = [float(scoring.phi(scoring.products[pid][0]) @ scoring.theta[u]) for u in ("u1", "u3")]
        np.testing.assert_allclose(list(item.per_user_scores), per_user, rtol=1e-5, atol=1e-5)
        assert item.score == pytest.approx(np.mean(per_user), rel=1e-5, abs=1e-5)
    assert [s.product_id for s in reply.scores] == ["p07", ""] and [s.item_index for s in reply.scores] == [0, 1]
    assert reply.model == common_pb2.ModelVersion(name=ITEM_ENCODER, version="1")


async def test_unknown_users_and_products_are_not_found(scoring: Scoring) -> None:
    await scoring.index()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scoring.stub.Recommend(scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="stranger"), k=3))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "'stranger'" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scoring.stub.ScoreItems(
            scoring_pb2.ScoreItemsRequest(
                audience=common_pb2.Audience(user=common_pb2.UserRef(user_id="u1")),
                items=[common_pb2.ItemSource(product_id="p99")],
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "'p99'" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scoring.stub.Recommend(scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=0))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "k must be between" in info.value.details()


async def test_a_new_user_is_folded_in_from_liked_products(scoring: Scoring) -> None:
    await scoring.index()
    liked = ["p02", "p04", "p09"]
    reply = await scoring.stub.Recommend(
        scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="new", liked_product_ids=liked), k=N_PRODUCTS)
    )
    direction = np.mean([scoring.phi(scoring.products[p][0]) for p in liked], axis=0) - scoring.item_mean
    theta = scoring.fold_in_scale * direction / np.linalg.norm(direction)
    assert reply.folded_in
    assert_same_ranking(scored(reply.products), [hit for hit in scoring.ranking(theta) if hit[0] not in liked])


async def test_deleted_products_are_no_longer_recommended(scoring: Scoring) -> None:
    await scoring.index()
    best = scoring.ranking(scoring.theta["u3"])[0][0]
    deleted = await scoring.stub.DeleteProducts(catalogue_pb2.DeleteProductsRequest(product_ids=[best, "p99"]))
    assert deleted.deleted == 1 and list(deleted.not_found) == ["p99"]
    reply = await scoring.stub.Recommend(
        scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u3"), k=N_PRODUCTS)
    )
    assert best not in [p.product.product_id for p in reply.products] and len(reply.products) == N_PRODUCTS - 1


async def test_health_follows_the_backend_the_store_and_the_user_vectors(scoring: Scoring, tmp_path: Path) -> None:
    address = scoring.host.address
    status = await get_status(address)
    assert {d.name: d.ready for d in status.dependencies} == dict.fromkeys(
        ("item_encoder", "user_vectors", "vector_store"), True
    )
    assert "3 users for item_encoder v1" in next(d.detail for d in status.dependencies if d.name == "user_vectors")

    scoring.backend.unavailable = True
    await scoring.host.monitor.check_once()
    assert await check_health(address) == "NOT_SERVING"
    details = {d.name: d.detail for d in (await get_status(address)).dependencies if not d.ready}
    assert set(details) == {"item_encoder", "user_vectors"} and "unavailable" in details["item_encoder"]
    scoring.backend.unavailable = False
    scoring.store.unavailable = True
    await scoring.host.monitor.check_once()
    assert [d.name for d in (await get_status(address)).dependencies if not d.ready] == ["vector_store"]
    scoring.store.unavailable = False
    # a new encoder version without user vectors: not ready until they are published
    scoring.backend.publish(ITEM_ENCODER, "2")
    await scoring.host.monitor.check_once()
    assert await check_health(address) == "NOT_SERVING"
    assert "item_encoder_v2.npz is missing" in (await get_status(address)).dependencies[1].detail
    write_user_table(tmp_path / "users", "2", USERS, np.ones((3, scoring.backend.dims.item_dim)))
    await scoring.host.monitor.check_once()
    assert await check_health(address) == "SERVING"
