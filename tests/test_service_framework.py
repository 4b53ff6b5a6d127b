"""The service framework over real gRPC on 127.0.0.1: health, reflection, diagnostics, error
mapping, deadlines, metrics and size limits, on the real services over the session's trained models
(in-process onnxruntime, milvus-lite files under tmp_path; marked integration automatically) and, for
the fast suite, on scoring and retrieval over the fakes of tests/support/fakes.py."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from PIL import Image
from prometheus_client import REGISTRY

from couturier.export.tools.launcher import free_port
from couturier.services.client import check_health, get_status, list_services, product_batches
from couturier.services.common import errors, limits
from couturier.services.common.config import ServerSettings
from couturier.services.common.health import DependencyCheck
from couturier.services.common.models import GRADIENT_MODELS, ITEM_ENCODER, LOOP_MODELS, RETRIEVAL_ENCODER
from couturier.services.common.product_images import FileImageStore
from couturier.services.common.server import ServiceDefinition, ServiceHost
from couturier.v1 import (
    catalogue_pb2,
    common_pb2,
    diagnostics_pb2,
    latent_pb2,
    latent_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)
from support.fakes import FakeInferenceBackend, InMemoryImageStore, InMemoryVectorStore, write_tokenizer
from support.hosts import assert_serving, injected_host, real_host
from support.trained import TrainedModels

EXPECTED_SERVICE = {
    "scoring": "couturier.v1.ScoringService",
    "latent": "couturier.v1.LatentOptimizationService",
    "retrieval": "couturier.v1.VisualRetrievalService",
    "orchestrator": "couturier.v1.OrchestratorService",
}
#: The dependency checks behind each service's health.
EXPECTED_DEPENDENCIES = {
    "scoring": {"item_encoder", "user_vectors", "vector_store"},
    # no other service (it takes resolved inputs); the gradient models, and the loop models of the default
    # optimiser (optimiser=loop)
    "latent": {*GRADIENT_MODELS, *LOOP_MODELS},
    "retrieval": {
        "retrieval_encoder",
        "text_encoder",
        "query_generator",
        "vector_store",
        "product_images",
        "tokenizer",
    },
    "orchestrator": {"scoring", "latent", "retrieval"},
}


def png_bytes(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def expect_error(call: object, code: grpc.StatusCode, *needles: str) -> str:
    """Awaits ``call``; it must fail with ``code`` and a message holding every needle (and no traceback)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    details = info.value.details() or ""
    assert info.value.code() == code, details
    for needle in needles:
        assert needle in details, details
    assert "Traceback" not in details
    return details


async def wait_for_status(
    address: str, predicate: Callable[[diagnostics_pb2.ServiceStatus], bool], timeout_s: float = 10.0
) -> diagnostics_pb2.ServiceStatus:
    """Polls GetStatus until ``predicate`` holds; fails with the last status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        status = await get_status(address)
        if predicate(status):
            return status
        if loop.time() > deadline:
            pytest.fail(f"{address}: condition not reached within {timeout_s:g}s; last status:\n{status}")
        await asyncio.sleep(0.05)


def ready_of(status: diagnostics_pb2.ServiceStatus) -> dict[str, bool]:
    return {dep.name: dep.ready for dep in status.dependencies}


def detail_of(status: diagnostics_pb2.ServiceStatus, name: str) -> str:
    return next(dep.detail for dep in status.dependencies if dep.name == name)


async def test_each_service_is_healthy_and_reflects_its_services(
    service_hosts: dict[str, ServiceHost], tmp_path: Path
) -> None:
    for key, host in service_hosts.items():
        assert host.settings.host == "127.0.0.1"
        assert await check_health(host.address) == "SERVING"
        assert await check_health(host.address, EXPECTED_SERVICE[key]) == "SERVING"
        names = await list_services(host.address)
        assert EXPECTED_SERVICE[key] in names
        assert {
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "couturier.v1.DiagnosticsService",
        } <= set(names)
        status = await get_status(host.address)
        assert status.serving and list(status.services) == [EXPECTED_SERVICE[key]]
        assert ready_of(status) == dict.fromkeys(EXPECTED_DEPENDENCIES[key], True), key
    for key in ("scoring", "retrieval"):  # each its own milvus-lite file, never the repository's var/
        status = await get_status(service_hosts[key].address)
        assert status.settings["milvus_uri"] == str(tmp_path / "milvus" / f"{key}.db")
        assert status.settings["inference_backend"] == "onnxruntime"
    status = await get_status(service_hosts["retrieval"].address)
    assert status.settings["product_images_dir"] == str(tmp_path / "product_images")


async def test_fake_backed_services_are_healthy_and_reflect_their_services(fake_hosts: dict[str, ServiceHost]) -> None:
    """The framework on scoring and retrieval over the fakes (no models): health per service name (every
    name reflection lists, DiagnosticsService included), reflection, diagnostics naming every dependency."""
    for key, host in fake_hosts.items():
        assert await check_health(host.address) == "SERVING"
        assert await check_health(host.address, EXPECTED_SERVICE[key]) == "SERVING"
        names = await list_services(host.address)
        assert set(names) == {
            EXPECTED_SERVICE[key],
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "couturier.v1.DiagnosticsService",
        }
        for name in names:  # health answers for every service reflection lists
            assert await check_health(host.address, name) == "SERVING", name
        status = await get_status(host.address)
        assert status.serving and list(status.services) == [EXPECTED_SERVICE[key]]
        assert ready_of(status) == dict.fromkeys(EXPECTED_DEPENDENCIES[key], True), key


async def test_unknown_health_service_is_not_found(fake_hosts: dict[str, ServiceHost]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check_health(fake_hosts["scoring"].address, "couturier.v1.NoSuchService")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_says_which_dependency_is_missing(tmp_path: Path) -> None:
    """A retrieval service without its tokenizer and with an unreachable store starts NOT_SERVING and
    says why; it turns SERVING once both are there."""
    store, backend = InMemoryVectorStore(), FakeInferenceBackend()
    store.unavailable = True
    host = injected_host(
        "retrieval",
        backend=backend,
        store=store,
        images=InMemoryImageStore(),
        tokenizer_json=str(tmp_path / "tokenizer.json"),
    )
    await host.start()
    try:
        assert await check_health(host.address) == "NOT_SERVING"
        status = await get_status(host.address)
        assert {name for name, ready in ready_of(status).items() if not ready} == {"vector_store", "tokenizer"}
        assert "tokenizer.json is missing" in detail_of(status, "tokenizer")
        assert "cannot reach" in detail_of(status, "vector_store")
        store.unavailable = False
        write_tokenizer(tmp_path / "tokenizer.json")
        await assert_serving(host, timeout_s=5)
    finally:
        await host.stop(grace_s=0)


async def test_orchestrator_health_follows_its_dependencies(trained_models: TrainedModels, tmp_path: Path) -> None:
    """NOT_SERVING (naming the missing dependency) -> SERVING when it comes up -> NOT_SERVING when one goes."""
    retrieval_address = f"127.0.0.1:{free_port()}"  # nothing listens there yet
    scoring = real_host("scoring", trained_models, tmp_path)
    await scoring.start()
    latent = real_host("latent", trained_models, tmp_path)
    await latent.start()
    orchestrator = real_host(
        "orchestrator",
        trained_models,
        tmp_path,
        scoring_target=scoring.address,
        latent_target=latent.address,
        retrieval_target=retrieval_address,
    )
    await orchestrator.start()
    retrieval: ServiceHost | None = None
    try:
        assert await check_health(scoring.address) == "SERVING"
        # The latent service calls no other service: only its models decide its health.
        await assert_serving(latent)
        status = await get_status(latent.address)
        assert ready_of(status) == dict.fromkeys(EXPECTED_DEPENDENCIES["latent"], True)

        assert await check_health(orchestrator.address) == "NOT_SERVING"
        status = await wait_for_status(orchestrator.address, lambda s: ready_of(s)["latent"])
        assert ready_of(status) == {"scoring": True, "latent": True, "retrieval": False}
        assert retrieval_address in detail_of(status, "retrieval")

        # The missing service comes up where the orchestrator expects it: it recovers without a restart.
        retrieval = real_host("retrieval", trained_models, tmp_path, port=int(retrieval_address.rsplit(":", 1)[1]))
        await retrieval.start()
        await assert_serving(retrieval)
        await assert_serving(orchestrator, timeout_s=10)
        assert all(ready_of(await get_status(orchestrator.address)).values())

        await latent.stop(grace_s=0)  # a ready dependency goes away -> NOT_SERVING, with the reason
        status = await wait_for_status(orchestrator.address, lambda s: not s.serving)
        assert ready_of(status) == {"scoring": True, "latent": False, "retrieval": True}
        assert await check_health(orchestrator.address) == "NOT_SERVING"
    finally:
        for host in (orchestrator, latent, retrieval, scoring):
            if host is not None:
                await host.stop(grace_s=0)


async def test_orchestrator_serves_when_every_dependency_does(service_hosts: dict[str, ServiceHost]) -> None:
    orchestrator = service_hosts["orchestrator"]
    assert await check_health(orchestrator.address) == "SERVING"
    status = await get_status(orchestrator.address)
    assert status.serving and all(dep.ready for dep in status.dependencies)
    for key in ("scoring", "latent", "retrieval"):
        assert status.settings[f"{key}_target"] == service_hosts[key].address
        assert f"{service_hosts[key].address} SERVING" == detail_of(status, key)
    latent = await get_status(service_hosts["latent"].address)
    assert not [name for name in latent.settings if name.endswith("_target")]  # it calls no other service


async def test_invalid_requests_get_invalid_argument_with_the_field_named(
    service_hosts: dict[str, ServiceHost],
) -> None:
    async with grpc.aio.insecure_channel(service_hosts["scoring"].address) as channel:
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        await expect_error(
            stub.Recommend(scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "k must be between 1 and 1000",
        )
        await expect_error(
            stub.Recommend(scoring_pb2.RecommendRequest(k=5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "user.user_id is required",
        )
        # Valid requests reach the real service, which says plainly what is missing.
        await expect_error(
            stub.Recommend(scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=5)),
            grpc.StatusCode.NOT_FOUND,
            "unknown users without liked products: 'u1'",
            "liked_product_ids",
        )
        # Liked products let an unknown user be folded in, but the index is still empty: say how to fill it.
        await expect_error(
            stub.Recommend(
                scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1", liked_product_ids=["p-404"]), k=5)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            ITEM_ENCODER,
            "`couturier index`",
        )


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "is empty"),
        (b"not an image at all", "not a readable PNG/JPEG/WebP"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a readable PNG/JPEG/WebP"),
        (b"\xff" * (limits.MAX_IMAGE_BYTES + 1), f"the limit is {limits.MAX_IMAGE_BYTES} bytes"),
    ],
)
async def test_corrupt_or_oversized_images_are_rejected(
    service_hosts: dict[str, ServiceHost], payload: bytes, needle: str
) -> None:
    async with grpc.aio.insecure_channel(service_hosts["retrieval"].address) as channel:
        stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        request = retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=payload), k=3)
        await expect_error(stub.SearchByImage(request), grpc.StatusCode.INVALID_ARGUMENT, needle)


async def test_too_many_pixels_are_rejected(service_hosts: dict[str, ServiceHost]) -> None:
    async with grpc.aio.insecure_channel(service_hosts["retrieval"].address) as channel:
        stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        big = png_bytes(limits.MAX_IMAGE_SIDE + 1)
        await expect_error(
            stub.SearchByImage(retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=big), k=3)),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the limit is {limits.MAX_IMAGE_SIDE} per side",
        )
        # A valid image reaches the encoder; the index is empty, and the answer says how to fill it.
        ok = png_bytes(8)
        await expect_error(
            stub.SearchByImage(retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=ok), k=3)),
            grpc.StatusCode.FAILED_PRECONDITION,
            RETRIEVAL_ENCODER,
            "`couturier index`",
        )


def trained_user(models: TrainedModels) -> str:
    """A user id with a trained vector (the scoring service knows it)."""
    return str(np.load(models.user_vectors)["user_ids"][0])


def resolved_audience(dim: int = 4) -> latent_pb2.ResolvedAudience:
    """A resolved audience of one user (as the orchestrator sends it; the values do not matter here)."""
    audience = latent_pb2.ResolvedAudience(model=common_pb2.ModelVersion(name=ITEM_ENCODER, version="1"))
    audience.users.add(user_id="u1", vector=[0.1] * dim)
    return audience


async def test_nan_and_ranges_in_latent_requests(service_hosts: dict[str, ServiceHost]) -> None:
    resolved = resolved_audience()
    async with grpc.aio.insecure_channel(service_hosts["latent"].address) as channel:
        stub = latent_pb2_grpc.LatentOptimizationServiceStub(channel)
        cases = [
            (latent_pb2.DesignRequest(resolved_audience=resolved, category="tops", n=17), "n must be between 1 and 16"),
            (
                latent_pb2.DesignRequest(
                    resolved_audience=resolved,
                    category="tops",
                    optimizer=latent_pb2.OptimizerParams(learning_rate=float("nan")),
                ),
                "optimizer.learning_rate must be a finite number",
            ),
            (latent_pb2.DesignRequest(category="tops"), "resolved_audience is required"),
            (
                latent_pb2.DesignRequest(resolved_audience=latent_pb2.ResolvedAudience(), category="tops"),
                "resolved_audience.users is empty",
            ),
            (latent_pb2.DesignRequest(resolved_audience=resolved, category="hats"), "unknown category 'hats'"),
            # user ids are the orchestrator's to resolve
            (
                latent_pb2.DesignRequest(audience=common_pb2.Audience(user=common_pb2.UserRef(user_id="u1"))),
                "OrchestratorService.Design",
            ),
        ]
        for request, needle in cases:
            await expect_error(stub.Design(request), grpc.StatusCode.INVALID_ARGUMENT, needle)


async def test_downstream_failures_keep_their_code_and_name_the_step(service_hosts: dict[str, ServiceHost]) -> None:
    """A valid request for an unknown user: scoring says NOT_FOUND, the orchestrator passes it on, naming the step."""
    design = latent_pb2.DesignRequest(
        audience=common_pb2.Audience(user=common_pb2.UserRef(user_id="u1")),
        category="tops",
        n=1,
        optimizer=latent_pb2.OptimizerParams(steps=1),
    )
    async with grpc.aio.insecure_channel(service_hosts["orchestrator"].address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        await expect_error(
            stub.Design(design),
            grpc.StatusCode.NOT_FOUND,
            "scoring.DescribeUsers failed (NOT_FOUND): unknown users without liked products: 'u1'",
        )
        await expect_error(
            stub.DesignAndShop(orchestrator_pb2.DesignAndShopRequest(design=design)),
            grpc.StatusCode.NOT_FOUND,
            "scoring.DescribeUsers failed (NOT_FOUND)",
        )


async def test_errors_inside_server_streams_are_mapped(
    service_hosts: dict[str, ServiceHost], trained_models: TrainedModels
) -> None:
    async with grpc.aio.insecure_channel(service_hosts["latent"].address) as channel:
        stub = latent_pb2_grpc.LatentOptimizationServiceStub(channel)
        uploaded = latent_pb2.AlterRequest(
            resolved_audience=resolved_audience(),
            item=common_pb2.ItemSource(image=common_pb2.ImagePayload(data=png_bytes())),
        )
        await expect_error(drain(stub.Alter(uploaded)), grpc.StatusCode.INVALID_ARGUMENT, "category is required")
    async with grpc.aio.insecure_channel(service_hosts["orchestrator"].address) as channel:
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        # A catalogue product while the index is empty: the retrieval service's answer, with the step named.
        missing = latent_pb2.AlterRequest(
            audience=common_pb2.Audience(user=common_pb2.UserRef(user_id=trained_user(trained_models))),
            item=common_pb2.ItemSource(product_id="p-404"),
        )
        await expect_error(
            drain(orchestrator.Alter(missing)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "retrieval.GetProducts failed",
            "`couturier index`",
        )


async def drain(stream: AsyncIterator[object]) -> None:
    async for _ in stream:
        pass


async def test_client_streams_are_validated(service_hosts: dict[str, ServiceHost]) -> None:
    def request(product: common_pb2.Product, image: bytes) -> catalogue_pb2.IndexProductsRequest:
        return catalogue_pb2.IndexProductsRequest(
            products=[catalogue_pb2.ProductToIndex(product=product, image=common_pb2.ImagePayload(data=image))]
        )

    cases = [
        (
            request(common_pb2.Product(product_id="p1"), png_bytes()),
            "message 0: products[0].product.category is required",
        ),
        (
            request(common_pb2.Product(product_id="p1", category="tops"), b"junk"),
            "message 0: products[0].image.data is not a readable",
        ),
        (catalogue_pb2.IndexProductsRequest(), "message 0 has 0 products"),
    ]
    for key, stub_type in (
        ("retrieval", retrieval_pb2_grpc.VisualRetrievalServiceStub),
        ("scoring", scoring_pb2_grpc.ScoringServiceStub),
    ):
        async with grpc.aio.insecure_channel(service_hosts[key].address) as channel:
            stub = stub_type(channel)
            for bad, needle in cases:
                await expect_error(stub.IndexProducts(iter([bad])), grpc.StatusCode.INVALID_ARGUMENT, needle)
            await expect_error(
                stub.IndexProducts(iter([])), grpc.StatusCode.INVALID_ARGUMENT, "carried no IndexProductsRequest"
            )
            stats = await stub.GetIndexStats(catalogue_pb2.GetIndexStatsRequest())
            assert stats.products == 0  # nothing was written by the refused streams


async def test_indexed_products_are_found_recommended_and_deleted(
    service_hosts: dict[str, ServiceHost], trained_models: TrainedModels, tmp_path: Path
) -> None:
    """Index a few real catalogue products through the orchestrator, then search, recommend and delete."""
    from couturier.export.data.dataset import load_prepared
    from couturier.export.tools.indexing import catalogue_products

    prepared = load_prepared(trained_models.data_dir)
    products = list(catalogue_products(prepared.catalogue, limit=24))
    ids = [product.product_id for product, _ in products]
    async with grpc.aio.insecure_channel(service_hosts["orchestrator"].address) as channel:
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        indexed = await orchestrator.IndexCatalogue(iter(product_batches(products, batch_size=10)), timeout=60)
    assert (indexed.scoring.upserted, indexed.scoring.total) == (24, 24)
    assert (indexed.retrieval.upserted, indexed.retrieval.total) == (24, 24)
    assert indexed.scoring.encoder == common_pb2.ModelVersion(
        name=ITEM_ENCODER, version=trained_models.versions[ITEM_ENCODER]
    )
    assert indexed.retrieval.encoder == common_pb2.ModelVersion(
        name=RETRIEVAL_ENCODER, version=trained_models.versions[RETRIEVAL_ENCODER]
    )

    async with grpc.aio.insecure_channel(service_hosts["retrieval"].address) as channel:
        retrieval = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        stats = await retrieval.GetIndexStats(catalogue_pb2.GetIndexStatsRequest())
        assert stats.products == 24 and sum(stats.per_category.values()) == 24
        assert list(stats.indexed_versions) == [trained_models.versions[RETRIEVAL_ENCODER]]

        query, query_image = products[3]
        found = await retrieval.SearchByImage(
            retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=query_image), k=5)
        )
        assert len(found.hits) == 5 and found.encoder == indexed.retrieval.encoder
        scores = [hit.score for hit in found.hits]
        assert scores == sorted(scores, reverse=True)
        assert {hit.product.product_id for hit in found.hits} <= set(ids)
        own = [hit for hit in found.hits if hit.product.product_id == query.product_id]
        assert own and own[0].score == pytest.approx(1.0, abs=1e-3)  # cosine of a product with itself
        filtered = await retrieval.SearchByImage(
            retrieval_pb2.SearchByImageRequest(
                image=common_pb2.ImagePayload(data=query_image),
                k=24,
                filter=retrieval_pb2.SearchFilter(categories=[query.category], exclude_product_ids=[query.product_id]),
            )
        )
        assert filtered.hits and all(h.product.category == query.category for h in filtered.hits)
        assert query.product_id not in {h.product.product_id for h in filtered.hits}

        got = await retrieval.GetProducts(retrieval_pb2.GetProductsRequest(product_ids=[query.product_id, "p-404"]))
        assert [p.product.product_id for p in got.products] == [query.product_id]
        assert list(got.not_found) == ["p-404"]
        assert Image.open(io.BytesIO(got.products[0].image.data)).format == "PNG"
        # the image lives in the product image store (the retrieval service's product_images_dir), not in Milvus
        kept = FileImageStore(tmp_path / "product_images")
        assert (await kept.get_many([query.product_id])) == {query.product_id: got.products[0].image.data}
        await kept.close()

    async with grpc.aio.insecure_channel(service_hosts["orchestrator"].address) as channel:
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        unknown = latent_pb2.AlterRequest(
            audience=common_pb2.Audience(user=common_pb2.UserRef(user_id=trained_user(trained_models))),
            item=common_pb2.ItemSource(product_id="p-404"),
        )
        await expect_error(
            drain(orchestrator.Alter(unknown)),
            grpc.StatusCode.NOT_FOUND,
            "product 'p-404' is not in the catalogue index",
        )

    user_id = str(prepared.interactions.user_ids[0])
    async with grpc.aio.insecure_channel(service_hosts["scoring"].address) as channel:
        scoring = scoring_pb2_grpc.ScoringServiceStub(channel)
        known = await scoring.Recommend(
            scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id=user_id), k=5, include_purchased=True)
        )
        assert len(known.products) == 5 and not known.folded_in
        assert known.model == indexed.scoring.encoder
        assert {p.product.product_id for p in known.products} <= set(ids)
        liked = ids[:3]
        new = await scoring.Recommend(
            scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="new-shopper", liked_product_ids=liked), k=5)
        )
        assert new.folded_in and 1 <= len(new.products) <= 5
        assert not set(liked) & {p.product.product_id for p in new.products}  # liked products are not recommended

        await expect_error(
            scoring.Recommend(
                scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1", liked_product_ids=["p-404"]), k=5)
            ),
            grpc.StatusCode.NOT_FOUND,
            "liked products not in the catalogue index",
            "'p-404'",
        )

        deleted = await scoring.DeleteProducts(catalogue_pb2.DeleteProductsRequest(product_ids=[ids[0], "p-404"]))
        assert deleted.deleted == 1 and list(deleted.not_found) == ["p-404"]
        assert (await scoring.GetIndexStats(catalogue_pb2.GetIndexStatsRequest())).products == 23


async def test_orchestrator_requires_its_nested_requests(service_hosts: dict[str, ServiceHost]) -> None:
    async with grpc.aio.insecure_channel(service_hosts["orchestrator"].address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        await expect_error(
            stub.DesignAndShop(orchestrator_pb2.DesignAndShopRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "design is required",
        )
        await expect_error(
            stub.SellerFeedback(orchestrator_pb2.SellerFeedbackRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "shifts is required",
        )
        await expect_error(
            stub.MultimodalShop(orchestrator_pb2.MultimodalShopRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "search is required",
        )


# --- the error interceptor on a service that raises every domain error -------------------------

FAULTS: dict[str, BaseException] = {
    "invalid": errors.InvalidInput("field x must be positive"),
    "unknown": errors.UnknownEntity("user u9 is not known"),
    "precondition": errors.PreconditionFailed("index holds two encoder versions"),
    "unavailable": errors.DependencyUnavailable("triton at 127.0.0.1:8001 is not reachable"),
    "deadline": errors.DeadlineExpired("optimisation took longer than the deadline"),
    "unimplemented": errors.NotYetImplemented("not served by this build"),
    "bug": KeyError("secret internal detail"),
}
EXPECTED_CODE = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown": grpc.StatusCode.NOT_FOUND,
    "precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unimplemented": grpc.StatusCode.UNIMPLEMENTED,
    "bug": grpc.StatusCode.INTERNAL,
}


def _fault_service(register_slow: bool = False) -> ServiceDefinition:
    async def raise_named(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise FAULTS[request.decode()]

    async def stream_then_raise(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        yield b"first"
        raise FAULTS[request.decode()]

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(5)
        return b"too late"

    handlers = {
        "Raise": grpc.unary_unary_rpc_method_handler(raise_named),
        "StreamRaise": grpc.unary_stream_rpc_method_handler(stream_then_raise),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    return ServiceDefinition(
        key="faults",
        service_names=["test.Faults"],
        register=lambda server: server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Faults", handlers),)
        ),
    )


@pytest.fixture
async def fault_host():  # type: ignore[no-untyped-def]
    host = ServiceHost(_fault_service(), ServerSettings(port=0, rpc_timeout_s=0.3))
    await host.start()
    yield host
    await host.stop(grace_s=0)


@pytest.mark.parametrize("name", sorted(FAULTS))
async def test_error_interceptor_maps_domain_errors(fault_host: ServiceHost, name: str) -> None:
    async with grpc.aio.insecure_channel(fault_host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/test.Faults/Raise")(name.encode())
        assert info.value.code() == EXPECTED_CODE[name]
        if name == "bug":
            assert "secret internal detail" not in info.value.details()
            assert "internal error (id " in info.value.details()
        else:
            assert info.value.details() == str(FAULTS[name])

        call = channel.unary_stream("/test.Faults/StreamRaise")(name.encode())
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for item in call:
                received.append(item)
        assert received == [b"first"]
        assert info.value.code() == EXPECTED_CODE[name]


async def test_server_side_deadline_and_metrics(fault_host: ServiceHost) -> None:
    def count(code: str) -> float:
        value = REGISTRY.get_sample_value(
            "couturier_rpc_requests_total", {"service": "test.Faults", "method": "Slow", "code": code}
        )
        return value or 0.0

    before = count("DEADLINE_EXCEEDED")
    async with grpc.aio.insecure_channel(fault_host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/test.Faults/Slow")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert count("DEADLINE_EXCEEDED") == before + 1
    latency = REGISTRY.get_sample_value(
        "couturier_rpc_latency_seconds_count", {"service": "test.Faults", "method": "Slow"}
    )
    assert latency is not None and latency >= 1


async def test_message_size_limit_from_config() -> None:
    host = injected_host(
        "retrieval",
        backend=FakeInferenceBackend(),
        store=InMemoryVectorStore(),
        images=InMemoryImageStore(),
        max_message_bytes=64 * 1024,
    )
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
            request = retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=b"x" * 100_000), k=1)
            await expect_error(stub.SearchByImage(request), grpc.StatusCode.RESOURCE_EXHAUSTED)
    finally:
        await host.stop(grace_s=0)


async def test_metrics_endpoint_serves_prometheus_text(tmp_path: Path) -> None:
    import urllib.request

    host = injected_host(
        "scoring",
        backend=FakeInferenceBackend(),
        store=InMemoryVectorStore(),
        metrics_port=0,
        user_vectors_dir=str(tmp_path / "user_vectors"),
    )
    await host.start()
    try:
        assert host.metrics_port
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = scoring_pb2_grpc.ScoringServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Recommend(scoring_pb2.RecommendRequest(k=1))
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{host.metrics_port}/metrics", timeout=5).read().decode()
        )
        assert (
            'couturier_rpc_requests_total{code="INVALID_ARGUMENT",method="Recommend",service="couturier.v1.ScoringService"}'
            in body
        )
    finally:
        await host.stop(grace_s=0)


async def test_graceful_shutdown_says_not_serving_first() -> None:
    slow_ready = asyncio.Event()

    async def probe() -> str:
        slow_ready.set()
        return "ok"

    definition = _fault_service()
    definition.checks = [DependencyCheck("dummy", probe)]
    host = ServiceHost(definition, ServerSettings(port=0))
    await host.start()
    assert slow_ready.is_set()
    address = host.address
    async with grpc.aio.insecure_channel(address) as channel:
        from grpc_health.v1 import health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(host.stop(grace_s=0.5))
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
