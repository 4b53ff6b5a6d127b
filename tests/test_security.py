"""Security on by configuration (docs/security.md), over real gRPC on 127.0.0.1 with real certificates made
by openssl at test time: TLS and mTLS on a service's port, bearer tokens with health and reflection open,
the orchestrator's channels to the other services over mTLS with a token, and the settings' checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from couturier.export.tools.launcher import free_port
from couturier.services.client import CouturierClient, get_status, list_services
from couturier.services.common import errors
from couturier.services.common.config import ServerSettings, load_settings
from couturier.services.common.downstream import ChannelSecurity
from couturier.services.common.security import TlsFiles, channel_credentials, load_tokens, read_token_file
from couturier.services.common.server import ServiceDefinition, ServiceHost
from couturier.v1 import catalogue_pb2, common_pb2, latent_pb2, orchestrator_pb2_grpc
from support.certs import Pki, make_pki
from support.fakes import FakeInferenceBackend, InMemoryVectorStore, write_user_table
from support.hosts import injected_host

TOKEN = "s3cret-token-of-the-shop-frontend"
OTHER_TOKEN = "s3cret-token-of-the-batch-indexer"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# caller:token\nshop-frontend:{TOKEN}\n\nbatch-indexer:{OTHER_TOKEN}\n")
    return path


def _echo_service() -> ServiceDefinition:
    """test.Echo/Who answers the caller name bound in the log context; test.Echo/Stream streams it twice."""

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str(structlog.contextvars.get_contextvars().get("caller", "")).encode() or b"-"

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield await who(request, context)

    handlers = {
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    return ServiceDefinition(
        key="echo",
        service_names=["test.Echo"],
        register=lambda server: server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        ),
    )


async def _started(**settings: object) -> ServiceHost:
    host = ServiceHost(_echo_service(), ServerSettings(port=0, **settings))  # type: ignore[arg-type]
    await host.start()
    return host


def _tls(pki: Pki, *, client_cert: bool = False, other: bool = False) -> grpc.ChannelCredentials:
    if other:
        return grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.other_client_key.read_bytes(), pki.other_client_cert.read_bytes()
        )
    if client_cert:
        return grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
    return grpc.ssl_channel_credentials(pki.ca.read_bytes())


async def _who(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None = None) -> bytes:
    reply: bytes = await channel.unary_unary("/test.Echo/Who")(b"", metadata=metadata, timeout=5)
    return reply


async def _code(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _who(channel, metadata)
    return info.value


# --- TLS and mTLS on a service's port -----------------------------------------------------------------


async def test_tls_port_answers_a_tls_client_and_refuses_a_plaintext_one(pki: Pki) -> None:
    host = await _started(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key))
    try:
        async with grpc.aio.secure_channel(host.address, _tls(pki)) as channel:
            assert await _who(channel) == b"-"
        async with grpc.aio.insecure_channel(host.address) as channel:
            assert (await _code(channel)).code() == grpc.StatusCode.UNAVAILABLE
        status = await get_status(host.address, security=ChannelSecurity(_tls(pki)))
        assert status.settings["transport"] == "tls" and status.settings["auth"] == "off"
    finally:
        await host.stop(grace_s=0)


async def test_mtls_refuses_a_client_without_a_certificate_or_with_an_untrusted_one(pki: Pki) -> None:
    host = await _started(
        tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key), tls_client_ca_file=str(pki.ca)
    )
    try:
        async with grpc.aio.secure_channel(host.address, _tls(pki, client_cert=True)) as channel:
            assert await _who(channel) == b"-"
        for credentials in (_tls(pki), _tls(pki, other=True)):
            async with grpc.aio.secure_channel(host.address, credentials) as channel:
                assert (await _code(channel)).code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(host.address) as channel:
            assert (await _code(channel)).code() == grpc.StatusCode.UNAVAILABLE
        client_side = ChannelSecurity(_tls(pki, client_cert=True))
        assert (await get_status(host.address, security=client_side)).settings["transport"] == "mtls"
    finally:
        await host.stop(grace_s=0)


async def test_a_bad_certificate_file_stops_the_start_naming_the_setting(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "not.pem").write_text("hello")
    host = ServiceHost(
        _echo_service(),
        ServerSettings(port=0, tls_cert_file=str(tmp_path / "not.pem"), tls_key_file=str(pki.server_key)),
    )
    with pytest.raises(errors.InvalidInput, match="tls_cert_file .* is not a PEM file"):
        await host.start()
    with pytest.raises(errors.InvalidInput, match="tls_cert_file and tls_key_file"):
        load_settings("scoring", tls_cert_file=str(pki.server_cert))
    with pytest.raises(errors.InvalidInput, match="tls_client_ca_file"):
        load_settings("latent", tls_client_ca_file=str(pki.ca))
    with pytest.raises(errors.InvalidInput, match="milvus_tls_cert_file"):
        load_settings("retrieval", milvus_tls_cert_file=str(pki.client_cert), milvus_tls_key_file=str(pki.client_key))


# --- bearer tokens ------------------------------------------------------------------------------------


async def test_tokens_refuse_missing_and_wrong_tokens_and_name_the_caller(tokens_file: Path) -> None:
    def counted(caller: str) -> float:
        labels = {"service": "test.Echo", "method": "Who", "caller": caller}
        return REGISTRY.get_sample_value("couturier_rpc_caller_requests_total", labels) or 0.0

    host = await _started(auth_tokens_file=str(tokens_file))
    try:
        before = counted("shop-frontend")
        async with grpc.aio.insecure_channel(host.address) as channel:
            missing = await _code(channel)
            assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "needs a bearer token" in (missing.details() or "")
            for header in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer ", TOKEN):
                wrong = await _code(channel, (("authorization", header),))
                assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED, header
                assert "not valid" in (wrong.details() or "")
            assert await _who(channel, (("authorization", f"Bearer {TOKEN}"),)) == b"shop-frontend"
            assert await _who(channel, (("authorization", f"Bearer {OTHER_TOKEN}"),)) == b"batch-indexer"
            stream = channel.unary_stream("/test.Echo/Stream")
            assert [r async for r in stream(b"", metadata=(("authorization", f"Bearer {TOKEN}"),))] == [
                b"shop-frontend"
            ] * 2
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [r async for r in stream(b"")]
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # health and reflection stay open: probes and discovery carry no token
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert "test.Echo" in await list_services(host.address)
        assert counted("shop-frontend") == before + 1  # the one Who call with its token
    finally:
        await host.stop(grace_s=0)


def test_tokens_file_is_checked_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    cases = {
        "no colon here": "expected 'caller-name:token'",
        "shop:short": "at least 16 characters",
        f"a b:{TOKEN}": "expected 'caller-name:token'",
        f"shop:{TOKEN}\nshop:{OTHER_TOKEN}": "appears twice",
        f"shop:{TOKEN}\nother:{TOKEN}": "appears twice",
        "# only a comment\n": "holds no",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(errors.InvalidInput, match=message):
            load_tokens(str(path))
    path.write_text(f"shop-frontend:{TOKEN}\n")
    assert load_tokens(str(path)) == {"shop-frontend": TOKEN}
    assert read_token_file(str(path), "token file") == TOKEN
    path.write_text(f"\n{TOKEN}\n")
    assert read_token_file(str(path), "token file") == TOKEN


# --- channels: the client and the orchestrator's downstream calls ----------------------------------------


@pytest.fixture
async def secured_scoring(pki: Pki, tokens_file: Path, tmp_path: Path) -> AsyncIterator[ServiceHost]:
    """The scoring service over the fakes with mTLS and tokens."""
    backend = FakeInferenceBackend()
    theta = np.random.default_rng(0).normal(size=(1, backend.dims.item_dim)).astype(np.float32)
    write_user_table(tmp_path / "user_vectors", "1", ["u1"], theta)
    host = injected_host(
        "scoring",
        backend=backend,
        store=InMemoryVectorStore("scoring"),
        user_vectors_dir=str(tmp_path / "user_vectors"),
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
        auth_tokens_file=str(tokens_file),
    )
    await host.start()
    yield host
    await host.stop(grace_s=0)


async def test_client_with_ca_certificate_and_token(secured_scoring: ServiceHost, pki: Pki) -> None:
    request = catalogue_pb2.GetIndexStatsRequest()
    async with CouturierClient(
        scoring_target=secured_scoring.address,
        root_ca_file=str(pki.ca),
        client_cert_file=str(pki.client_cert),
        client_key_file=str(pki.client_key),
        token=TOKEN,
    ) as client:
        try:
            await client.scoring.GetIndexStats(request, timeout=10)
        except grpc.aio.AioRpcError as exc:  # the empty fake store may answer an error of its own: not these
            assert exc.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE), exc
    async with CouturierClient(
        scoring_target=secured_scoring.address,
        root_ca_file=str(pki.ca),
        client_cert_file=str(pki.client_cert),
        client_key_file=str(pki.client_key),
    ) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.scoring.GetIndexStats(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_orchestrator_reaches_its_downstream_over_mtls_with_a_token(
    secured_scoring: ServiceHost, pki: Pki, tmp_path: Path
) -> None:
    token_file = tmp_path / "downstream-token"
    token_file.write_text(f"orchestrator:{TOKEN}\n")
    orchestrator = injected_host(
        "orchestrator",
        scoring_target=secured_scoring.address,
        latent_target=f"127.0.0.1:{free_port()}",  # not started: only scoring is reached here
        retrieval_target=f"127.0.0.1:{free_port()}",
        downstream_tls_ca_file=str(pki.ca),
        downstream_tls_cert_file=str(pki.client_cert),
        downstream_tls_key_file=str(pki.client_key),
        downstream_token_file=str(token_file),
    )
    await orchestrator.start()
    try:
        deadline = time.monotonic() + 10
        while True:  # the health probe goes over mTLS
            status = await get_status(orchestrator.address)
            scoring = {d.name: d for d in status.dependencies}["scoring"]
            if scoring.ready or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert scoring.ready, scoring.detail
        assert status.settings["downstream_transport"] == "mtls" and status.settings["downstream_token"] == "sent"
        design = latent_pb2.DesignRequest(
            audience=common_pb2.Audience(user=common_pb2.UserRef(user_id="nobody")),
            category="tops",
            n=1,
            optimizer=latent_pb2.OptimizerParams(steps=1),
        )
        async with grpc.aio.insecure_channel(orchestrator.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await orchestrator_pb2_grpc.OrchestratorServiceStub(channel).Design(design, timeout=10)
        # scoring answered (over mTLS, with the token): its own NOT_FOUND, not UNAVAILABLE or UNAUTHENTICATED
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
        assert "scoring.DescribeUsers failed (NOT_FOUND)" in (info.value.details() or "")
    finally:
        await orchestrator.stop(grace_s=0)


def test_channel_credentials_need_readable_pem_files(tmp_path: Path) -> None:
    assert channel_credentials(TlsFiles()) is None
    with pytest.raises(errors.InvalidInput, match="cannot read downstream_tls CA file"):
        channel_credentials(TlsFiles(ca_file=str(tmp_path / "missing.crt")), "downstream_tls")
    with pytest.raises(errors.InvalidInput, match="go together"):
        TlsFiles(cert_file="a.crt")


def test_metrics_listener_is_loopback_by_default() -> None:
    assert ServerSettings().metrics_host == "127.0.0.1"
    assert load_settings("orchestrator", metrics_port=9090).metrics_host == "127.0.0.1"


# --- Triton and Milvus channels -------------------------------------------------------------------------


async def test_triton_backend_speaks_mtls_to_a_tls_inference_server(pki: Pki) -> None:
    """The services' Triton channel with triton_tls_* settings, against a stand-in that serves Triton's
    ModelReady over mTLS (a real tritonserver with --grpc-use-ssl is not started here; docs/security.md)."""
    from tritonclient.grpc import service_pb2

    from couturier.services.common.inference import backend_for

    async def model_ready(request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext) -> object:
        return service_pb2.ModelReadyResponse(ready=request.name == "lin")

    handler = grpc.unary_unary_rpc_method_handler(
        model_ready,
        request_deserializer=service_pb2.ModelReadyRequest.FromString,
        response_serializer=service_pb2.ModelReadyResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelReady": handler}),)
    )
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        url = f"127.0.0.1:{port}"
        common = {"inference_backend": "triton", "triton_url": url, "inference_timeout_s": 5.0}
        common["triton_tls_ca_file"] = str(pki.ca)
        secured = backend_for(
            load_settings(
                "latent", **common, triton_tls_cert_file=str(pki.client_cert), triton_tls_key_file=str(pki.client_key)
            )
        )
        assert await secured.is_ready("lin") and not await secured.is_ready("other")
        for settings in (  # no client certificate; plaintext
            load_settings("latent", **common),
            load_settings("latent", inference_backend="triton", triton_url=url, inference_timeout_s=5.0),
        ):
            refused = backend_for(settings)
            assert not await refused.is_ready("lin")
            await refused.close()
        await secured.close()
    finally:
        await server.stop(0)


async def test_milvus_tls_options_follow_pymilvus_arguments(tmp_path: Path) -> None:
    from couturier.services.common.vectors.store import VectorStore, milvus_tls_options

    assert milvus_tls_options("") == {}
    assert milvus_tls_options("ca.crt") == {"secure": True, "server_pem_path": "ca.crt"}
    assert milvus_tls_options("ca.crt", "c.crt", "c.key", "milvus.example") == {
        "secure": True,
        "ca_pem_path": "ca.crt",
        "client_pem_path": "c.crt",
        "client_key_path": "c.key",
        "server_name": "milvus.example",
    }
    with pytest.raises(ValueError, match="not a milvus-lite file"):
        VectorStore(str(tmp_path / "x.db"), tls=milvus_tls_options("ca.crt"))
    store = VectorStore("https://milvus.example:19530", tls=milvus_tls_options("ca.crt"))
    assert "over TLS" in store.describe()
    await store.close()
