"""Python client helpers for callers and operators: health, reflection and diagnostics over gRPC."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from couturier.v1 import diagnostics_pb2, diagnostics_pb2_grpc


def serving_status_name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


async def check_health(target: str, service: str = "", timeout_s: float = 2.0) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) that ``target`` reports for ``service``."""
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return serving_status_name(reply.status)


async def wait_until_serving(target: str, service: str = "", timeout_s: float = 30.0) -> float:
    """Poll health until SERVING; returns seconds waited. Raises TimeoutError with the last answer."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        try:
            last = await check_health(target, service, timeout_s=1.0)
            if last == "SERVING":
                return time.monotonic() - started
        except grpc.aio.AioRpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout_s:g}s (last answer: {last})")


async def list_services(target: str, timeout_s: float = 5.0) -> list[str]:
    """Service names the server at ``target`` lists through gRPC server reflection."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(timeout=timeout_s)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        names: list[str] = []
        async for reply in call:
            names.extend(service.name for service in reply.list_services_response.service)
    return sorted(names)


async def get_status(target: str, timeout_s: float = 5.0) -> diagnostics_pb2.ServiceStatus:
    """Why a service is (not) serving: dependencies, settings shown, fallbacks taken."""
    async with grpc.aio.insecure_channel(target) as channel:
        return await diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).GetStatus(
            diagnostics_pb2.GetStatusRequest(), timeout=timeout_s
        )
