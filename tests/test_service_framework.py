"""The service framework over real gRPC on 127.0.0.1: health, reflection, diagnostics, error
mapping, deadlines, metrics and size limits."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from PIL import Image
from prometheus_client import REGISTRY

from couturier.services.client import check_health, get_status, list_services
from couturier.services.common import errors, limits
from couturier.services.common.config import ServerSettings
from couturier.services.common.health import DependencyCheck
from couturier.services.common.server import ServiceDefinition, ServiceHost
from couturier.services.registry import make_host
from couturier.v1 import (
    common_pb2,
    latent_pb2,
    latent_pb2_grpc,
    orchestrator_pb2,
    retrieval_pb2,
    retrieval_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)

EXPECTED_SERVICE = {
    "scoring": "couturier.v1.ScoringService",
    "latent": "couturier.v1.LatentOptimizationService",
    "retrieval": "couturier.v1.VisualRetrievalService",
    "orchestrator": "couturier.v1.OrchestratorService",
}


def png_bytes(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_each_skeleton_is_healthy_and_reflects_its_services(skeleton_hosts: dict[str, ServiceHost]) -> None:
    for key, host in skeleton_hosts.items():
        assert host.settings.host == "127.0.0.1"
        assert await check_health(host.address) == "SERVING"
        assert await check_health(host.address, EXPECTED_SERVICE[key]) == "SERVING"
        names = await list_services(host.address)
        assert EXPECTED_SERVICE[key] in names
        assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "couturier.v1.DiagnosticsService"} <= set(names)


async def test_unknown_health_service_is_not_found(skeleton_hosts: dict[str, ServiceHost]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check_health(skeleton_hosts["scoring"].address, "couturier.v1.NoSuchService")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_orchestrator_health_follows_its_dependencies() -> None:
    scoring, latent = make_host("scoring", port=0), make_host("latent", port=0)
    await scoring.start()
    await latent.start()
    orchestrator = make_host(
        "orchestrator",
        port=0,
        health_interval_s=0.1,
        scoring_target=scoring.address,
        latent_target=latent.address,
        retrieval_target="127.0.0.1:1",  # nothing listens there
    )
    await orchestrator.start()
    try:
        assert await check_health(orchestrator.address) == "NOT_SERVING"
        status = await get_status(orchestrator.address)
        ready = {dep.name: dep.ready for dep in status.dependencies}
        assert ready == {"scoring": True, "latent": True, "retrieval": False}
        assert "127.0.0.1:1" in next(d.detail for d in status.dependencies if d.name == "retrieval")

        await latent.stop(grace_s=0)  # a ready dependency goes away -> NOT_SERVING, with the reason
        await asyncio.sleep(0.4)
        status = await get_status(orchestrator.address)
        assert not status.serving
        assert not next(d.ready for d in status.dependencies if d.name == "latent")
    finally:
        for host in (orchestrator, scoring, latent):
            await host.stop(grace_s=0)


async def test_orchestrator_recovers_when_dependencies_come_up(skeleton_hosts: dict[str, ServiceHost]) -> None:
    orchestrator = skeleton_hosts["orchestrator"]
    assert await check_health(orchestrator.address) == "SERVING"
    status = await get_status(orchestrator.address)
    assert status.serving and all(dep.ready for dep in status.dependencies)
    assert status.settings["scoring_target"] == skeleton_hosts["scoring"].address


async def test_invalid_requests_get_invalid_argument_with_the_field_named(skeleton_hosts: dict[str, ServiceHost]) -> None:
    async with grpc.aio.insecure_channel(skeleton_hosts["scoring"].address) as channel:
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Recommend(scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=0))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "k must be between 1 and 1000" in info.value.details()
        assert "Traceback" not in info.value.details()

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Recommend(scoring_pb2.RecommendRequest(k=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "user.user_id is required" in info.value.details()

        # A valid request reaches the skeleton, which says plainly what it cannot do yet.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Recommend(scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=5))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "DVBPR" in info.value.details()


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
    skeleton_hosts: dict[str, ServiceHost], payload: bytes, needle: str
) -> None:
    async with grpc.aio.insecure_channel(skeleton_hosts["retrieval"].address) as channel:
        stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SearchByImage(retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=payload), k=3))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in info.value.details()


async def test_too_many_pixels_are_rejected(skeleton_hosts: dict[str, ServiceHost]) -> None:
    async with grpc.aio.insecure_channel(skeleton_hosts["retrieval"].address) as channel:
        stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        big = png_bytes(limits.MAX_IMAGE_SIDE + 1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SearchByImage(retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=big), k=3))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"the limit is {limits.MAX_IMAGE_SIDE} per side" in info.value.details()
        ok = png_bytes(8)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SearchByImage(retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=ok), k=3))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_nan_and_ranges_in_latent_requests(skeleton_hosts: dict[str, ServiceHost]) -> None:
    audience = common_pb2.Audience(user=common_pb2.UserRef(user_id="u1"))
    async with grpc.aio.insecure_channel(skeleton_hosts["latent"].address) as channel:
        stub = latent_pb2_grpc.LatentOptimizationServiceStub(channel)
        cases = [
            (latent_pb2.DesignRequest(audience=audience, category="tops", n=17), "n must be between 1 and 16"),
            (
                latent_pb2.DesignRequest(
                    audience=audience, category="tops", optimizer=latent_pb2.OptimizerParams(learning_rate=float("nan"))
                ),
                "optimizer.learning_rate must be a finite number",
            ),
            (latent_pb2.DesignRequest(category="tops"), "audience must name a user or a group"),
            (
                latent_pb2.DesignRequest(audience=common_pb2.Audience(group=common_pb2.UserGroup()), category="tops"),
                "audience.group has no users",
            ),
        ]
        for request, needle in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Design(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, needle
            assert needle in info.value.details()


async def test_errors_inside_server_streams_are_mapped(skeleton_hosts: dict[str, ServiceHost]) -> None:
    async with grpc.aio.insecure_channel(skeleton_hosts["latent"].address) as channel:
        stub = latent_pb2_grpc.LatentOptimizationServiceStub(channel)
        request = latent_pb2.AlterRequest(
            audience=common_pb2.Audience(user=common_pb2.UserRef(user_id="u1")),
            item=common_pb2.ItemSource(image=common_pb2.ImagePayload(data=png_bytes())),
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Alter(request):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "category is required" in info.value.details()


async def test_client_streams_are_validated(skeleton_hosts: dict[str, ServiceHost]) -> None:
    async with grpc.aio.insecure_channel(skeleton_hosts["retrieval"].address) as channel:
        stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        bad = retrieval_pb2.IndexProductsRequest(
            products=[retrieval_pb2.ProductToIndex(product=common_pb2.Product(product_id="p1"), image=common_pb2.ImagePayload(data=b"junk"))]
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.IndexProducts(iter([bad]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "products[0].image.data is not a readable" in info.value.details()


async def test_orchestrator_requires_its_nested_requests(skeleton_hosts: dict[str, ServiceHost]) -> None:
    from couturier.v1 import orchestrator_pb2_grpc

    async with grpc.aio.insecure_channel(skeleton_hosts["orchestrator"].address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DesignAndShop(orchestrator_pb2.DesignAndShopRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "design is required" in info.value.details()


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
        register=lambda server: server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Faults", handlers),)),
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
    host = make_host("retrieval", port=0, max_message_bytes=64 * 1024)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
            request = retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=b"x" * 100_000), k=1)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SearchByImage(request)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await host.stop(grace_s=0)


async def test_metrics_endpoint_serves_prometheus_text() -> None:
    import urllib.request

    host = make_host("scoring", port=0, metrics_port=0)
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
        assert 'couturier_rpc_requests_total{code="INVALID_ARGUMENT",method="Recommend",service="couturier.v1.ScoringService"}' in body
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
