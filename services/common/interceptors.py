"""Server interceptors shared by every service: error mapping, deadlines and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_interceptor.server import AsyncServerInterceptor

from couturier.services.common.errors import map_exception
from couturier.services.common.logs import get_logger
from couturier.services.common.metrics import RPC_LATENCY, RPC_REQUESTS

log = get_logger(__name__)


def _split(method_name: str) -> tuple[str, str]:
    service, _, method = method_name.rpartition("/")
    return service.lstrip("/"), method


class ErrorMappingInterceptor(AsyncServerInterceptor):
    """Turns exceptions into gRPC statuses (see errors.map_exception); never leaks a stack trace."""

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        try:
            result = method(request, context)
            if hasattr(result, "__aiter__"):
                return self._guard_stream(result, context, method_name)
            return await result
        except Exception as exc:
            await self._abort(exc, context, method_name)

    async def _guard_stream(
        self, stream: AsyncIterator[Any], context: grpc.aio.ServicerContext, method_name: str
    ) -> AsyncIterator[Any]:
        try:
            async for item in stream:
                yield item
        except Exception as exc:
            await self._abort(exc, context, method_name)

    @staticmethod
    async def _abort(exc: Exception, context: grpc.aio.ServicerContext, method_name: str) -> None:
        if isinstance(exc, grpc.aio.AbortError):  # the handler already chose a status
            raise exc
        status, error_id = map_exception(exc)
        if error_id is not None:
            log.error("unexpected error", method=method_name, error_id=error_id, exc_info=exc)
        else:
            log.info("request failed", method=method_name, code=status.code.name, reason=status.message)
        await context.abort(status.code, status.message)


class DeadlineInterceptor(AsyncServerInterceptor):
    """Bounds each unary call by min(caller's deadline, rpc_timeout_s); expiry -> DEADLINE_EXCEEDED."""

    def __init__(self, rpc_timeout_s: float) -> None:
        self._limit = rpc_timeout_s

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        result = method(request, context)
        if hasattr(result, "__aiter__"):
            return result  # streams report progress; the caller's deadline bounds them
        remaining = context.time_remaining()
        budget = self._limit if remaining is None else min(self._limit, remaining)
        return await asyncio.wait_for(result, timeout=budget)


class MetricsInterceptor(AsyncServerInterceptor):
    """Counts finished RPCs by status code and observes their latency."""

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        service, rpc = _split(method_name)
        started = time.perf_counter()
        try:
            result = method(request, context)
            if hasattr(result, "__aiter__"):
                return self._observe_stream(result, service, rpc, started)
            response = await result
        except Exception as exc:
            self._record(service, rpc, started, exc)
            raise
        self._record(service, rpc, started, None)
        return response

    async def _observe_stream(
        self, stream: AsyncIterator[Any], service: str, rpc: str, started: float
    ) -> AsyncIterator[Any]:
        try:
            async for item in stream:
                yield item
        except Exception as exc:
            self._record(service, rpc, started, exc)
            raise
        self._record(service, rpc, started, None)

    @staticmethod
    def _record(service: str, rpc: str, started: float, exc: BaseException | None) -> None:
        if exc is None:
            code = grpc.StatusCode.OK.name
        elif isinstance(exc, grpc.aio.AbortError):
            code = "ABORTED_BY_HANDLER"
        else:
            code = map_exception(exc)[0].code.name
        RPC_REQUESTS.labels(service, rpc, code).inc()
        RPC_LATENCY.labels(service, rpc).observe(time.perf_counter() - started)
