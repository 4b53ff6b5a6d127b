"""The visual retrieval service's logic over real gRPC on 127.0.0.1, with the fake backend and the
in-memory store injected: hits must be the nearest products by the fake retrieval encoder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from couturier.services.client import get_status, product_batches
from couturier.services.common.images import decode_image, encode_png, to_model_input
from couturier.services.common.models import QUERY_GENERATOR, RETRIEVAL_ENCODER, TEXT_ENCODER
from couturier.services.common.server import ServiceHost
from couturier.services.retrieval.text_encoder import Tokenizer
from couturier.v1 import catalogue_pb2, common_pb2, retrieval_pb2, retrieval_pb2_grpc
from support.fakes import FakeInferenceBackend, InMemoryImageStore, InMemoryVectorStore, write_tokenizer
from support.hosts import assert_serving, injected_host

N_PRODUCTS = 10
CATEGORIES = ("tops", "dresses")
COLOURS = ("red", "green", "blue")


class Retrieval:
    def __init__(
        self,
        host: ServiceHost,
        backend: FakeInferenceBackend,
        store: InMemoryVectorStore,
        images: InMemoryImageStore,
        channel: grpc.aio.Channel,
        tokenizer_json: Path,
    ) -> None:
        self.host, self.backend, self.store, self.image_store = host, backend, store, images
        self.tokenizer_json = tokenizer_json
        self.stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        rng = np.random.default_rng(5)
        self.images = {f"r{i}": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for i in range(N_PRODUCTS)}
        self.meta = {pid: (CATEGORIES[i % 2], COLOURS[i % 3]) for i, pid in enumerate(self.images)}

    def model_input(self, image: np.ndarray) -> np.ndarray:
        return to_model_input([image], self.backend.dims.image_size)

    def nearest(self, query: np.ndarray, *, keep: set[str] | None = None) -> list[tuple[str, float]]:
        """Products by cosine of the fake retrieval encoder's (unit) embeddings, best first."""
        nets = self.backend.nets("1")
        q = nets.retrieval_encoder(self.model_input(query))[0]
        scores = {
            pid: float(nets.retrieval_encoder(self.model_input(img))[0] @ q)
            for pid, img in self.images.items()
            if keep is None or pid in keep
        }
        return sorted(scores.items(), key=lambda kv: -kv[1])

    async def index(self) -> catalogue_pb2.IndexProductsResponse:
        pairs = [
            (common_pb2.Product(product_id=pid, category=self.meta[pid][0], colour=self.meta[pid][1]), encode_png(img))
            for pid, img in self.images.items()
        ]
        return await self.stub.IndexProducts(iter(list(product_batches(pairs, batch_size=4))))

    def search(self, image: np.ndarray | bytes, k: int = N_PRODUCTS, **filters: list[str]):  # type: ignore[no-untyped-def]
        data = image if isinstance(image, bytes) else encode_png(image)
        return self.stub.SearchByImage(
            retrieval_pb2.SearchByImageRequest(
                image=common_pb2.ImagePayload(data=data), k=k, filter=retrieval_pb2.SearchFilter(**filters)
            )
        )


@pytest.fixture
async def retrieval(
    tmp_path: Path, fake_backend: FakeInferenceBackend, memory_store: InMemoryVectorStore
) -> AsyncIterator[Retrieval]:
    tokenizer_json = write_tokenizer(tmp_path / "tokenizer.json", "same but in red make it a sandal".split())
    images = InMemoryImageStore()
    host = injected_host(
        "retrieval", backend=fake_backend, store=memory_store, images=images, tokenizer_json=str(tokenizer_json)
    )
    await host.start()
    try:
        await assert_serving(host, timeout_s=5)
        async with grpc.aio.insecure_channel(host.address) as channel:
            yield Retrieval(host, fake_backend, memory_store, images, channel, tokenizer_json)
    finally:
        await host.stop(grace_s=0)
    assert fake_backend.closed and memory_store.closed and images.closed


def hits_of(reply: retrieval_pb2.SearchResponse) -> list[tuple[str, float]]:
    return [(h.product.product_id, h.score) for h in reply.hits]


def assert_same_hits(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [pid for pid, _ in got] == [pid for pid, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5, atol=1e-5)


async def test_search_by_image_returns_the_nearest_by_the_encoder(retrieval: Retrieval) -> None:
    indexed = await retrieval.index()
    assert indexed.total == N_PRODUCTS
    assert indexed.encoder == common_pb2.ModelVersion(name=RETRIEVAL_ENCODER, version="1")
    query = retrieval.images["r3"]
    reply = await retrieval.search(query, k=4)
    assert reply.hits[0].product.product_id == "r3" and reply.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert_same_hits(hits_of(reply), retrieval.nearest(query)[:4])
    assert reply.encoder.version == "1"
    # an image the catalogue does not hold: still the exact nearest products
    other = np.random.default_rng(99).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert_same_hits(hits_of(await retrieval.search(other)), retrieval.nearest(other))


async def test_search_filters_by_category_colour_and_exclusions(retrieval: Retrieval) -> None:
    await retrieval.index()
    query = retrieval.images["r0"]
    reply = await retrieval.search(query, categories=["dresses"], colours=["red", "blue"], exclude_product_ids=["r5"])
    keep = {
        pid for pid, (cat, col) in retrieval.meta.items() if cat == "dresses" and col in ("red", "blue") and pid != "r5"
    }
    assert keep and set(retrieval.images) - keep
    assert_same_hits(hits_of(reply), retrieval.nearest(query, keep=keep))
    assert {(h.product.category, h.product.colour) for h in reply.hits} <= {("dresses", "red"), ("dresses", "blue")}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "image.data is empty"),
        (b"not an image at all", "not a readable"),
        (encode_png(np.zeros((4, 4, 3), np.uint8))[:30], "not a readable"),  # a truncated PNG
    ],
)
async def test_bad_images_are_invalid_argument(retrieval: Retrieval, data: bytes, needle: str) -> None:
    await retrieval.index()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.search(data)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in info.value.details()
    assert retrieval.store.calls["search"] == 0  # refused before anything was searched


async def test_k_and_an_empty_index_are_refused_with_their_reason(retrieval: Retrieval) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.search(retrieval.images["r1"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "couturier index" in info.value.details()
    await retrieval.index()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.search(retrieval.images["r1"], k=0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "k must be between" in info.value.details()


async def test_search_by_image_and_text_searches_the_synthetic_query(retrieval: Retrieval) -> None:
    await retrieval.index()
    reference, text = retrieval.images["r2"], "same but in red"
    reply = await retrieval.stub.SearchByImageAndText(
        retrieval_pb2.SearchByImageAndTextRequest(
            image=common_pb2.ImagePayload(data=encode_png(reference)), text=text, k=3
        )
    )
    nets = retrieval.backend.nets("1")
    text_vector = nets.text_encoder(**Tokenizer(retrieval.tokenizer_json)([text]))
    synthetic = nets.query_generator(retrieval.model_input(reference), text_vector)[0]
    expected = np.clip((synthetic.transpose(1, 2, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    shown = decode_image(reply.synthetic_query.data)
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1
    assert_same_hits([(h.product.product_id, h.score) for h in reply.hits], retrieval.nearest(shown)[:3])
    assert reply.query_generator == common_pb2.ModelVersion(name=QUERY_GENERATOR, version="1")
    assert retrieval.backend.calls[TEXT_ENCODER] == 1 and retrieval.backend.calls[QUERY_GENERATOR] == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.stub.SearchByImageAndText(
            retrieval_pb2.SearchByImageAndTextRequest(
                image=common_pb2.ImagePayload(data=encode_png(reference)), text="   ", k=3
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text must have" in info.value.details()


async def test_get_products_returns_the_kept_images_and_names_the_missing(retrieval: Retrieval) -> None:
    await retrieval.index()
    assert set(retrieval.image_store.images) == set(retrieval.images)  # every indexed product's image is kept
    reply = await retrieval.stub.GetProducts(retrieval_pb2.GetProductsRequest(product_ids=["r4", "nope", "r7"]))
    assert [p.product.product_id for p in reply.products] == ["r4", "r7"] and list(reply.not_found) == ["nope"]
    size = retrieval.backend.dims.image_size
    thumbnail = decode_image(reply.products[0].image.data)
    expected = np.clip((retrieval.model_input(retrieval.images["r4"])[0].transpose(1, 2, 0) + 1) * 127.5 + 0.5, 0, 255)
    assert thumbnail.shape == (size, size, 3) and np.abs(thumbnail.astype(int) - expected.astype(int)).max() <= 1
    assert reply.products[0].product.category == retrieval.meta["r4"][0]


async def test_health_follows_each_model(retrieval: Retrieval) -> None:
    host = retrieval.host
    assert {d.name for d in (await get_status(host.address)).dependencies if d.ready} == {
        RETRIEVAL_ENCODER,
        TEXT_ENCODER,
        QUERY_GENERATOR,
        "vector_store",
        "product_images",
        "tokenizer",
    }
    retrieval.backend.unload(QUERY_GENERATOR)
    await host.monitor.check_once()
    status = await get_status(host.address)
    assert not status.serving and [d.name for d in status.dependencies if not d.ready] == [QUERY_GENERATOR]


async def test_without_a_multimodal_model_text_search_is_refused_and_health_ignores_it(
    fake_backend: FakeInferenceBackend, memory_store: InMemoryVectorStore
) -> None:
    """A deployment trained on a dataset without a usable attribute has no query generator: image search
    serves, SearchByImageAndText answers FAILED_PRECONDITION naming why."""
    fake_backend.unload(QUERY_GENERATOR)
    fake_backend.unload(TEXT_ENCODER)
    host = injected_host(
        "retrieval", backend=fake_backend, store=memory_store, images=InMemoryImageStore(), multimodal=False
    )
    await host.start()
    try:
        await assert_serving(host, timeout_s=5)
        status = await get_status(host.address)
        assert {d.name for d in status.dependencies} == {RETRIEVAL_ENCODER, "vector_store", "product_images"}
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
            request = retrieval_pb2.SearchByImageAndTextRequest(
                image=common_pb2.ImagePayload(data=encode_png(np.zeros((12, 12, 3), np.uint8))), text="in red", k=3
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SearchByImageAndText(request)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no query generator" in info.value.details() and "attribute" in info.value.details()
            assert fake_backend.calls[QUERY_GENERATOR] == 0
    finally:
        await host.stop(grace_s=0)
