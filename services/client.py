"""Python client for callers and operators: the couturier services, health, reflection, diagnostics.

    async with CouturierClient("orchestrator:50050") as client:
        shop = await client.orchestrator.DesignAndShop(request, timeout=60)

``CouturierClient`` holds one channel per service (round-robin over every address a target resolves
to) and the generated stubs; give ``root_ca_file`` for services with TLS, ``client_cert_file`` /
``client_key_file`` for mTLS and ``token`` for services with bearer tokens (docs/security.md);
:func:`product_batches` turns (product, image bytes) pairs into the
``IndexProductsRequest`` stream that ``IndexCatalogue`` / ``IndexProducts`` take.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from couturier.services.common import limits
from couturier.services.common.downstream import ChannelSecurity, open_channel
from couturier.services.common.security import TlsFiles, channel_credentials
from couturier.v1 import (
    catalogue_pb2,
    common_pb2,
    diagnostics_pb2,
    diagnostics_pb2_grpc,
    latent_pb2_grpc,
    orchestrator_pb2_grpc,
    retrieval_pb2_grpc,
    scoring_pb2_grpc,
)

#: Client-side message limit (the services accept 16 MiB by default).
CLIENT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class CouturierClient:
    """Stubs of every couturier service; give the targets of the services you call."""

    orchestrator_target: str = ""
    scoring_target: str = ""
    latent_target: str = ""
    retrieval_target: str = ""
    #: PEM CA that signed the services' certificates ("" with no client certificate: plaintext).
    root_ca_file: str = ""
    #: PEM client certificate and key, for services that demand mTLS.
    client_cert_file: str = ""
    client_key_file: str = ""
    #: Bearer token sent on every call (services with auth_tokens_file).
    token: str = field(default="", repr=False)
    #: Name the services' certificates are checked against when it is not the target's host.
    server_name: str = ""
    _channels: list[grpc.aio.Channel] = field(default_factory=list, init=False, repr=False)

    @property
    def security(self) -> ChannelSecurity:
        """TLS and token of this client's channels."""
        files = TlsFiles(self.client_cert_file, self.client_key_file, self.root_ca_file)
        return ChannelSecurity(channel_credentials(files, "client TLS"), self.server_name, self.token)

    def _channel(self, target: str, name: str, security: ChannelSecurity) -> grpc.aio.Channel:
        if not target:
            raise ValueError(f"no target given for the {name} service")
        channel = open_channel(target, CLIENT_MAX_MESSAGE_BYTES, security=security)
        self._channels.append(channel)
        return channel

    def __post_init__(self) -> None:
        targets = {
            "orchestrator": self.orchestrator_target,
            "scoring": self.scoring_target,
            "latent": self.latent_target,
            "retrieval": self.retrieval_target,
        }
        stubs: dict[str, Callable[[grpc.aio.Channel], Any]] = {
            "orchestrator": orchestrator_pb2_grpc.OrchestratorServiceStub,
            "scoring": scoring_pb2_grpc.ScoringServiceStub,
            "latent": latent_pb2_grpc.LatentOptimizationServiceStub,
            "retrieval": retrieval_pb2_grpc.VisualRetrievalServiceStub,
        }
        security = self.security
        for name, target in targets.items():
            setattr(self, f"_{name}", stubs[name](self._channel(target, name, security)) if target else None)

    def _stub(self, name: str) -> Any:
        stub = getattr(self, f"_{name}")
        if stub is None:
            raise ValueError(f"CouturierClient was created without {name}_target")
        return stub

    @property
    def orchestrator(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        stub: orchestrator_pb2_grpc.OrchestratorServiceStub = self._stub("orchestrator")
        return stub

    @property
    def scoring(self) -> scoring_pb2_grpc.ScoringServiceStub:
        stub: scoring_pb2_grpc.ScoringServiceStub = self._stub("scoring")
        return stub

    @property
    def latent(self) -> latent_pb2_grpc.LatentOptimizationServiceStub:
        stub: latent_pb2_grpc.LatentOptimizationServiceStub = self._stub("latent")
        return stub

    @property
    def retrieval(self) -> retrieval_pb2_grpc.VisualRetrievalServiceStub:
        stub: retrieval_pb2_grpc.VisualRetrievalServiceStub = self._stub("retrieval")
        return stub

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))

    async def __aenter__(self) -> CouturierClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def product_batches(
    products: Iterable[tuple[common_pb2.Product, bytes]], batch_size: int = 256, encoder_version: str = ""
) -> Iterator[catalogue_pb2.IndexProductsRequest]:
    """(product, encoded image) pairs -> IndexProductsRequest messages of at most ``batch_size`` products."""
    if not 1 <= batch_size <= limits.MAX_INDEX_BATCH:
        raise ValueError(f"batch_size must be 1-{limits.MAX_INDEX_BATCH}")
    batch = catalogue_pb2.IndexProductsRequest(encoder_version=encoder_version)
    for product, image in products:
        batch.products.add(product=product, image=common_pb2.ImagePayload(data=image, mime_type="image/png"))
        if len(batch.products) == batch_size:
            yield batch
            batch = catalogue_pb2.IndexProductsRequest(encoder_version=encoder_version)
    if batch.products:
        yield batch


def serving_status_name(status: int) -> str:
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return name


def _plain_channel(target: str, security: ChannelSecurity | None) -> grpc.aio.Channel:
    """One channel to ``target`` with ``security`` (None: plaintext, no token)."""
    if security is None:
        return grpc.aio.insecure_channel(target)
    return open_channel(target, CLIENT_MAX_MESSAGE_BYTES, security=security)


async def check_health(
    target: str, service: str = "", timeout_s: float = 2.0, security: ChannelSecurity | None = None
) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) that ``target`` reports for ``service``.
    ``security``: TLS (and token) for a service that has them (CouturierClient.security)."""
    async with _plain_channel(target, security) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return serving_status_name(reply.status)


async def wait_until_serving(
    target: str, service: str = "", timeout_s: float = 30.0, security: ChannelSecurity | None = None
) -> float:
    """Poll health until SERVING; returns seconds waited. Raises TimeoutError with the last answer."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        try:
            last = await check_health(target, service, timeout_s=1.0, security=security)
            if last == "SERVING":
                return time.monotonic() - started
        except grpc.aio.AioRpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout_s:g}s (last answer: {last})")


async def list_services(target: str, timeout_s: float = 5.0, security: ChannelSecurity | None = None) -> list[str]:
    """Service names the server at ``target`` lists through gRPC server reflection."""
    async with _plain_channel(target, security) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(timeout=timeout_s)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        names: list[str] = []
        async for reply in call:
            names.extend(service.name for service in reply.list_services_response.service)
    return sorted(names)


async def get_status(
    target: str, timeout_s: float = 5.0, security: ChannelSecurity | None = None
) -> diagnostics_pb2.ServiceStatus:
    """Why a service is (not) serving: dependencies, settings shown, fallbacks taken (needs the token when
    the service has auth_tokens_file)."""
    async with _plain_channel(target, security) as channel:
        status: diagnostics_pb2.ServiceStatus = await diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).GetStatus(
            diagnostics_pb2.GetStatusRequest(), timeout=timeout_s
        )
    return status
