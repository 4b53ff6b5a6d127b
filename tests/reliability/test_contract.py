"""Every dependency error mapped to a status (issue 13, item 1) and the contract enforced as written
(item 4): image formats, list limits, the status for an unknown version, health for every service
that reflection lists."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from couturier.services.client import check_health, list_services
from couturier.services.common import errors, limits
from couturier.services.common.encoders import ImageEncoder
from couturier.services.common.inference import (
    BackendFailed,
    BackendOverloaded,
    BackendRefused,
    BackendUnavailable,
    BadInferenceInput,
    InferenceTimeout,
    ModelNotReady,
    _map_triton_error,
)
from couturier.services.common.models import RETRIEVAL_ENCODER
from couturier.services.common.server import ServiceHost
from couturier.v1 import catalogue_pb2, common_pb2, retrieval_pb2, retrieval_pb2_grpc, scoring_pb2, scoring_pb2_grpc
from support.fakes import FakeInferenceBackend

# -- every dependency error has a status ---------------------------------------------------------------

#: What a Triton error with each gRPC status becomes, and the status the caller sees.
TRITON = {
    "RESOURCE_EXHAUSTED": (BackendOverloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    "INVALID_ARGUMENT": (BadInferenceInput, grpc.StatusCode.INVALID_ARGUMENT),
    "OUT_OF_RANGE": (BadInferenceInput, grpc.StatusCode.INVALID_ARGUMENT),
    "NOT_FOUND": (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    "UNAVAILABLE": (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    "CANCELLED": (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    "ABORTED": (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    "DEADLINE_EXCEEDED": (InferenceTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    "UNIMPLEMENTED": (BackendRefused, grpc.StatusCode.FAILED_PRECONDITION),
    "PERMISSION_DENIED": (BackendRefused, grpc.StatusCode.FAILED_PRECONDITION),
    "UNAUTHENTICATED": (BackendRefused, grpc.StatusCode.FAILED_PRECONDITION),
    "FAILED_PRECONDITION": (BackendRefused, grpc.StatusCode.FAILED_PRECONDITION),
    "INTERNAL": (BackendFailed, grpc.StatusCode.INTERNAL),
    "UNKNOWN": (BackendFailed, grpc.StatusCode.INTERNAL),
    "DATA_LOSS": (BackendFailed, grpc.StatusCode.INTERNAL),
    "ALREADY_EXISTS": (BackendFailed, grpc.StatusCode.INTERNAL),
}


def test_every_grpc_status_of_triton_is_mapped() -> None:
    assert set(TRITON) == {code.name for code in grpc.StatusCode} - {"OK"}


@pytest.mark.parametrize("status", sorted(TRITON))
def test_triton_errors_become_statuses(status: str) -> None:
    from tritonclient.utils import InferenceServerException

    exc = InferenceServerException("model said no: " + "x" * 100_000, status=f"StatusCode.{status}")
    error = _map_triton_error(exc, "item_encoder", "127.0.0.1:8001")
    expected_type, expected_code = TRITON[status]
    assert isinstance(error, expected_type), type(error)
    mapped, error_id = errors.map_exception(error)
    assert mapped.code == expected_code
    assert len(mapped.message) <= limits.MAX_STATUS_MESSAGE_CHARS + 40
    # only a failure nothing else explains is INTERNAL, with an error id for the log
    assert (error_id is not None) == (expected_code == grpc.StatusCode.INTERNAL)
    if error_id is not None:
        assert f"error id {error_id}" in mapped.message and "Triton" in mapped.message


def test_triton_client_errors_without_a_status_are_read_from_the_message() -> None:
    from tritonclient.utils import InferenceServerException

    refused = InferenceServerException("failed to connect to all addresses; Connection refused")
    assert isinstance(_map_triton_error(refused, "m", "u"), BackendUnavailable)
    too_big = InferenceServerException("Received message larger than max (9 vs. 4)")
    assert isinstance(_map_triton_error(too_big, "m", "u"), BackendOverloaded)


class _SyncRpcError(grpc.RpcError):
    """What a dependency's synchronous gRPC client (pymilvus) raises."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "details " * 1000


def _milvus(code: int, **kwargs: Any) -> Exception:
    from pymilvus.exceptions import MilvusException

    return MilvusException(code, "milvus says " + "m" * 10_000, **kwargs)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (lambda: _milvus(8), grpc.StatusCode.RESOURCE_EXHAUSTED),  # rate limit
        (lambda: _milvus(3), grpc.StatusCode.RESOURCE_EXHAUSTED),  # memory limit
        (lambda: _milvus(65535, compatible_code=53), grpc.StatusCode.RESOURCE_EXHAUSTED),  # memory quota
        (lambda: _milvus(65535, compatible_code=56), grpc.StatusCode.UNAVAILABLE),  # not ready to serve
        (lambda: _milvus(65535, retriable=True), grpc.StatusCode.UNAVAILABLE),
        (lambda: _milvus(1100, is_input_error=True), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: _milvus(65535), grpc.StatusCode.INTERNAL),
        (lambda: _SyncRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (lambda: _SyncRpcError(grpc.StatusCode.UNAVAILABLE), grpc.StatusCode.UNAVAILABLE),
        (lambda: _SyncRpcError(grpc.StatusCode.DATA_LOSS), grpc.StatusCode.INTERNAL),
    ],
)
def test_milvus_and_dependency_grpc_errors_become_statuses(error: Any, expected: grpc.StatusCode) -> None:
    mapped, error_id = errors.map_exception(error())
    assert mapped.code == expected
    assert len(mapped.message) <= limits.MAX_STATUS_MESSAGE_CHARS + 40
    assert (error_id is not None) == (expected == grpc.StatusCode.INTERNAL)
    if expected != grpc.StatusCode.INTERNAL:
        assert "failed" in mapped.message


# -- image formats ---------------------------------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "ICO", "PPM"])
async def test_images_of_other_formats_are_refused_naming_the_accepted_ones(
    fake_hosts: dict[str, ServiceHost], fmt: str
) -> None:
    async with grpc.aio.insecure_channel(fake_hosts["retrieval"].address) as channel:
        stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        request = retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=_encoded(fmt)), k=3)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SearchByImage(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"image.data is in {fmt} format; send PNG, JPEG or WebP"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
async def test_png_jpeg_and_webp_are_accepted(fake_hosts: dict[str, ServiceHost], fmt: str) -> None:
    async with grpc.aio.insecure_channel(fake_hosts["retrieval"].address) as channel:
        stub = retrieval_pb2_grpc.VisualRetrievalServiceStub(channel)
        request = retrieval_pb2.SearchByImageRequest(image=common_pb2.ImagePayload(data=_encoded(fmt)), k=3)
        with pytest.raises(grpc.aio.AioRpcError) as info:  # decoded and embedded; the index is empty
            await stub.SearchByImage(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()


# -- list limits as the proto says -------------------------------------------------------------------------


def _comment_above(proto: str, declaration: str) -> str:
    """The comment lines right above the field declaration containing ``declaration``."""
    lines = (Path(common_pb2.__file__).parent / proto).read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if declaration in line)
    comment = []
    while lines[index - 1].strip().startswith("//"):
        index -= 1
        comment.insert(0, lines[index].strip().removeprefix("//").strip())
    return " ".join(comment)


@pytest.mark.parametrize(
    ("proto", "declaration"),
    [
        ("scoring.proto", "repeated string exclude_product_ids = 5;"),
        ("retrieval.proto", "repeated string exclude_product_ids = 3;"),
        ("common.proto", "repeated string liked_product_ids = 2;"),
    ],
)
def test_the_id_list_limits_are_the_protos(proto: str, declaration: str) -> None:
    assert limits.MAX_EXCLUDED_IDS == 1000
    assert "at most 1000" in _comment_above(proto, declaration)


@pytest.mark.parametrize("count", [limits.MAX_EXCLUDED_IDS, limits.MAX_EXCLUDED_IDS + 1])
async def test_excluded_ids_over_the_limit_are_refused(fake_hosts: dict[str, ServiceHost], count: int) -> None:
    ids = [f"x{i}" for i in range(count)]
    async with grpc.aio.insecure_channel(fake_hosts["scoring"].address) as channel:
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        request = scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=3, exclude_product_ids=ids)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Recommend(request, timeout=5)
    if count > limits.MAX_EXCLUDED_IDS:
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == f"exclude_product_ids has {count} entries; at most 1000"
    else:  # accepted: the (empty) index says how to fill it
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()


# -- an unknown version is NOT_FOUND, not the retryable UNAVAILABLE ----------------------------------------


@pytest.mark.parametrize("service", ["scoring", "retrieval"])
async def test_an_unknown_encoder_version_is_not_found(fake_hosts: dict[str, ServiceHost], service: str) -> None:
    """NOT_FOUND: the caller named a version the model server does not serve; retrying the same request
    cannot help until someone loads it (UNAVAILABLE would invite retries). A version that is not a
    number is INVALID_ARGUMENT."""
    method = f"/couturier.v1.{'ScoringService' if service == 'scoring' else 'VisualRetrievalService'}/GetIndexStats"
    async with grpc.aio.insecure_channel(fake_hosts[service].address) as channel:
        stats = channel.unary_unary(
            method,
            request_serializer=catalogue_pb2.GetIndexStatsRequest.SerializeToString,
            response_deserializer=catalogue_pb2.IndexStats.FromString,
        )
        for version, code, needle in [
            ("99", grpc.StatusCode.NOT_FOUND, "encoder_version 99 of"),
            ("9" * limits.MAX_VERSION_CHARS, grpc.StatusCode.NOT_FOUND, "is not served by the model server"),
            ("v2", grpc.StatusCode.INVALID_ARGUMENT, "must be a version number"),
            ("٣", grpc.StatusCode.INVALID_ARGUMENT, "must be a version number"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stats(catalogue_pb2.GetIndexStatsRequest(encoder_version=version), timeout=5)
            assert info.value.code() == code, (version, info.value.details())
            assert needle in (info.value.details() or "")
        served = await stats(catalogue_pb2.GetIndexStatsRequest(encoder_version="1"), timeout=5)
        assert served.encoder.version == "1"


async def test_a_pinned_version_that_is_not_served_stays_unavailable() -> None:
    """The deployment's own pin not being served is an outage (health shows it), not the caller's fault."""
    encoder = ImageEncoder(FakeInferenceBackend(), RETRIEVAL_ENCODER, pinned_version="7")
    with pytest.raises(ModelNotReady) as info:
        await encoder.version()
    assert errors.map_exception(info.value)[0].code == grpc.StatusCode.UNAVAILABLE


# -- health answers for every service that reflection lists -------------------------------------------------


async def test_health_answers_for_every_reflected_service(fake_hosts: dict[str, ServiceHost]) -> None:
    for host in fake_hosts.values():
        listed = await list_services(host.address)
        assert sorted(host.reflected_services) == listed
        assert "couturier.v1.DiagnosticsService" in listed
        for name in listed:
            assert await check_health(host.address, name) == "SERVING", name


async def test_infrastructure_services_say_not_serving_on_shutdown(fake_backend: FakeInferenceBackend) -> None:
    from support.hosts import injected_host

    host = injected_host("latent", backend=fake_backend)
    await host.start()
    address = host.address
    async with grpc.aio.insecure_channel(address) as channel:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="couturier.v1.DiagnosticsService")
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        await host.monitor.shutdown()
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    await host.stop(grace_s=0)
