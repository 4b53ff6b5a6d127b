"""Dependency-driven health: the standard gRPC health service says SERVING only while every
dependency of a service is ready; DiagnosticsService says which dependency is not and why. The
server's infrastructure services (diagnostics, health, reflection) answer SERVING until shutdown, so
health knows every service that reflection lists."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from couturier.services.common.logs import get_logger
from couturier.v1 import diagnostics_pb2

log = get_logger(__name__)

Probe = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class DependencyCheck:
    """A named readiness probe: returns a short detail when ready, raises (with a reason) when not."""

    name: str
    probe: Probe
    timeout_s: float = 2.0


@dataclass
class _State:
    ready: bool = False
    detail: str = "not checked yet"


@dataclass
class HealthMonitor:
    """Polls dependency checks and publishes the result through the standard health service."""

    service_names: Sequence[str]
    checks: Sequence[DependencyCheck]
    interval_s: float
    settings: dict[str, str] = field(default_factory=dict)
    version: str = ""
    #: Services of the server that work whatever the dependencies' state (diagnostics, health, reflection):
    #: SERVING until shutdown.
    infrastructure_names: Sequence[str] = ()
    servicer: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)
    fallbacks: list[str] = field(default_factory=list)
    _states: dict[str, _State] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    async def start(self) -> None:
        self._states = {check.name: _State() for check in self.checks}
        await self.check_once()
        self._task = asyncio.create_task(self._loop(), name="health-monitor")

    async def check_once(self) -> bool:
        """Runs every probe once, updates the health service; True when all are ready."""
        results = await asyncio.gather(*(self._probe(check) for check in self.checks))
        for check, (ready, detail) in zip(self.checks, results, strict=True):
            state = self._states.setdefault(check.name, _State())
            if ready != state.ready:
                log.info("dependency state changed", dependency=check.name, ready=ready, detail=detail)
            state.ready, state.detail = ready, detail
        await self._publish()
        return self.serving

    @property
    def serving(self) -> bool:
        return not self._stopping and all(state.ready for state in self._states.values())

    def record_fallback(self, description: str) -> None:
        """Remember and log a fallback the service took (visible in GetStatus)."""
        log.warning("fallback taken", fallback=description)
        self.fallbacks.append(description)

    async def shutdown(self) -> None:
        """Say NOT_SERVING everywhere (load balancers drain us) and stop polling."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.servicer.enter_graceful_shutdown()

    def status(self) -> diagnostics_pb2.ServiceStatus:
        return diagnostics_pb2.ServiceStatus(
            services=list(self.service_names),
            serving=self.serving,
            dependencies=[
                diagnostics_pb2.DependencyStatus(name=name, ready=state.ready, detail=state.detail)
                for name, state in self._states.items()
            ],
            settings=self.settings,
            fallbacks=self.fallbacks,
            version=self.version,
        )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception:  # a bug in a probe must not stop health reporting
                log.exception("health check loop failed")

    async def _probe(self, check: DependencyCheck) -> tuple[bool, str]:
        try:
            return True, await asyncio.wait_for(check.probe(), timeout=check.timeout_s)
        except TimeoutError:
            return False, f"no answer within {check.timeout_s:g}s"
        except Exception as exc:
            return False, str(exc) or type(exc).__name__

    async def _publish(self) -> None:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        status = serving if self.serving else not_serving
        for name in ("", *self.service_names):
            await self.servicer.set(name, status)
        for name in self.infrastructure_names:
            await self.servicer.set(name, not_serving if self._stopping else serving)


class GrpcHealthProbe:
    """A probe that asks another gRPC server's standard health service (downstream services).

    ``reconnect``: channel arguments (downstream.reconnect_options). A probe that finds the target
    UNAVAILABLE drops its channel, so the next probe connects at once instead of waiting out the
    channel's reconnect backoff: health follows a restarted service within one probe interval.
    ``credentials`` / ``server_name``: TLS to the target (health needs no token)."""

    def __init__(
        self,
        target: str,
        service: str = "",
        timeout_s: float = 2.0,
        reconnect: list[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
    ) -> None:
        self.target, self.service, self.timeout_s = target, service, timeout_s
        self.reconnect = list(reconnect or [])
        if server_name:
            self.reconnect.append(("grpc.ssl_target_name_override", server_name))
        self.credentials = credentials
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self) -> str:
        if self._channel is None:
            if self.credentials is not None:
                self._channel = grpc.aio.secure_channel(self.target, self.credentials, options=self.reconnect)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=self.reconnect)
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                await self.close()
            raise ConnectionError(f"{self.target}: {exc.code().name} {exc.details() or ''}".strip()) from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            raise ConnectionError(f"{self.target} reports {name}")
        return f"{self.target} SERVING"

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
