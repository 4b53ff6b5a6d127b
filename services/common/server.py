"""One way to run a couturier gRPC service: grpc.aio server with health, reflection, diagnostics,
error mapping, deadlines, metrics, the request guard (decode errors and field caps) and graceful
shutdown. The health service answers for every service that reflection lists."""

from __future__ import annotations

import asyncio
import importlib.metadata
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from couturier.services.common.config import ServerSettings
from couturier.services.common.health import DependencyCheck, HealthMonitor
from couturier.services.common.interceptors import (
    DeadlineInterceptor,
    ErrorMappingInterceptor,
    MetricsInterceptor,
    RequestGuardInterceptor,
)
from couturier.services.common.logs import configure_logging, get_logger, is_configured, shutdown_logging
from couturier.services.common.metrics import start_metrics_endpoint
from couturier.services.common.security import TokenAuthInterceptor, load_tokens, server_credentials, transport_name
from couturier.v1 import diagnostics_pb2, diagnostics_pb2_grpc

log = get_logger(__name__)

#: The installed couturier distribution's version (pyproject.toml is its one source).
VERSION = importlib.metadata.version("couturier")

#: Services every couturier server runs next to its own: reflection lists them, health answers for them
#: (SERVING while the process serves at all: they work whatever the dependencies' state).
INFRASTRUCTURE_SERVICES: tuple[str, ...] = (
    diagnostics_pb2.DESCRIPTOR.services_by_name["DiagnosticsService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


@dataclass
class ServiceDefinition:
    """What a service contributes to a server: its servicer(s), dependencies and what to show."""

    key: str  # short name: scoring, latent, retrieval, orchestrator
    service_names: Sequence[str]  # fully qualified proto service names
    register: Callable[[grpc.aio.Server], None]
    checks: Sequence[DependencyCheck] = ()
    shown_settings: dict[str, str] = field(default_factory=dict)
    on_stop: Callable[[], Awaitable[None]] | None = None


class _Diagnostics(diagnostics_pb2_grpc.DiagnosticsServiceServicer):
    def __init__(self, monitor: HealthMonitor) -> None:
        self._monitor = monitor

    async def GetStatus(
        self, request: diagnostics_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> diagnostics_pb2.ServiceStatus:
        return self._monitor.status()


class ServiceHost:
    """Runs one ServiceDefinition on its own grpc.aio server."""

    def __init__(self, definition: ServiceDefinition, settings: ServerSettings) -> None:
        self.definition = definition
        self.settings = settings
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.monitor = HealthMonitor(
            service_names=definition.service_names,
            checks=definition.checks,
            interval_s=settings.health_interval_s,
            settings={**definition.shown_settings, **self.security_settings},
            version=VERSION,
            infrastructure_names=INFRASTRUCTURE_SERVICES,
        )
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"{self.settings.host}:{self.port}"

    @property
    def security_settings(self) -> dict[str, str]:
        """What GetStatus shows about the port's protection: transport, auth and the metrics listener."""
        settings = self.settings
        metrics = "off" if settings.metrics_port is None else f"{settings.metrics_host}:{settings.metrics_port}"
        return {
            "transport": transport_name(settings.server_tls),
            "auth": "bearer tokens" if settings.auth_tokens_file else "off",
            "metrics_listener": metrics,
        }

    @property
    def reflected_services(self) -> list[str]:
        """What reflection lists (and health answers for): the service's own, then the infrastructure."""
        return [*self.definition.service_names, *INFRASTRUCTURE_SERVICES]

    async def start(self) -> int:
        if not is_configured():  # never structlog's defaults (tracebacks with locals, written on the loop)
            configure_logging(
                self.settings.log_level,
                self.settings.log_format,
                repeat_limit=self.settings.log_repeat_limit,
                repeat_interval_s=self.settings.log_repeat_interval_s,
            )
        # Certificates and tokens are read now: a bad file stops the start with the setting's name.
        credentials = server_credentials(self.settings.server_tls)
        auth = (
            TokenAuthInterceptor(load_tokens(self.settings.auth_tokens_file))
            if self.settings.auth_tokens_file
            else None
        )
        server = grpc.aio.server(
            interceptors=[
                ErrorMappingInterceptor(),
                MetricsInterceptor(),
                DeadlineInterceptor(self.settings.rpc_timeout_s, self.settings.stream_timeout_s),
                *([auth] if auth is not None else []),  # before the guard: no field checks for a caller without a token
                RequestGuardInterceptor(),
            ],
            options=self.settings.grpc_options,
        )
        self.definition.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.monitor.servicer, server)
        diagnostics_pb2_grpc.add_DiagnosticsServiceServicer_to_server(_Diagnostics(self.monitor), server)
        reflection.enable_server_reflection(self.reflected_services, server)
        if credentials is None:
            self.port = server.add_insecure_port(self.settings.bind_address)
        else:
            self.port = server.add_secure_port(self.settings.bind_address, credentials)
        if self.port == 0:
            raise OSError(f"could not bind {self.settings.bind_address}")
        await self.monitor.start()
        await server.start()
        self._server = server
        if self.settings.metrics_port is not None:
            self.metrics_port = start_metrics_endpoint(self.settings.metrics_host, self.settings.metrics_port)
        log.info(
            "service started",
            service=self.definition.key,
            address=self.address,
            metrics_port=self.metrics_port,
            serving=self.monitor.serving,
            callers=len(auth.callers) if auth is not None else 0,
            **self.security_settings,
            **self.definition.shown_settings,
        )
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING first, then let in-flight calls finish within the grace period."""
        if self._server is None:
            return
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self.monitor.shutdown()
        await self._server.stop(grace)
        if self.definition.on_stop is not None:
            await self.definition.on_stop()
        self._server = None
        log.info("service stopped", service=self.definition.key)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def run_until_signalled(hosts: Sequence[ServiceHost], ready: Callable[[], None] | None = None) -> None:
    """Start the hosts, run until SIGINT/SIGTERM, then stop them gracefully (and the log writer)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[ServiceHost] = []
    try:
        for host in hosts:
            await host.start()
            started.append(host)
        if ready is not None:
            ready()
        await stop.wait()
        log.info("shutdown requested")
    finally:
        await asyncio.gather(*(host.stop() for host in reversed(started)))
        shutdown_logging()
