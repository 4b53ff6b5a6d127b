"""Server interceptors shared by every service: error mapping, deadlines, metrics and the request guard.

A server chains them as ``[ErrorMappingInterceptor, MetricsInterceptor, DeadlineInterceptor,
RequestGuardInterceptor]`` (outermost first): whatever the inner ones raise is counted, then mapped
to a status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_interceptor.server import AsyncServerInterceptor

from couturier.services.common.errors import DeadlineExpired, InvalidInput, brief, map_exception
from couturier.services.common.logs import get_logger
from couturier.services.common.metrics import RPC_LATENCY, RPC_REQUESTS
from couturier.services.common.validation import check_field_limits

log = get_logger(__name__)

#: RPCs no server-side time cap applies to: a health Watch is meant to stay open (it holds no work).
UNCAPPED_METHODS = frozenset({"/grpc.health.v1.Health/Watch"})


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
    """Bounds every call: a unary one by min(caller's deadline, rpc_timeout_s), one with a stream in either
    direction by min(caller's deadline, stream_timeout_s); expiry -> DEADLINE_EXCEEDED. Only
    :data:`UNCAPPED_METHODS` run without a cap."""

    def __init__(self, rpc_timeout_s: float, stream_timeout_s: float | None = None) -> None:
        self._limit = rpc_timeout_s
        self._stream_limit = rpc_timeout_s if stream_timeout_s is None else stream_timeout_s

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        result = method(request, context)
        if method_name in UNCAPPED_METHODS:
            return result if hasattr(result, "__aiter__") else await result
        streaming = hasattr(result, "__aiter__") or hasattr(request, "__aiter__")
        limit = self._stream_limit if streaming else self._limit
        remaining = context.time_remaining()
        budget = limit if remaining is None else min(limit, remaining)
        if hasattr(result, "__aiter__"):
            return self._bounded(result, budget, method_name)
        return await asyncio.wait_for(result, timeout=budget)

    @staticmethod
    async def _bounded(stream: AsyncIterator[Any], budget: float, method_name: str) -> AsyncIterator[Any]:
        """``stream``'s items until ``budget`` seconds have passed; then DeadlineExpired (the stream is closed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        iterator = aiter(stream)
        expired = DeadlineExpired(
            f"{method_name} ran past its time cap of {budget:.3g} s (the caller's deadline, or the server's "
            "stream_timeout_s); ask for less work per call"
        )
        try:
            while True:
                if loop.time() >= deadline:
                    raise expired
                try:
                    async with asyncio.timeout_at(deadline) as scope:
                        item = await anext(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if scope.expired():
                        raise expired from None
                    raise
                yield item
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()


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


@dataclass(frozen=True)
class Undecodable:
    """What a request deserializer returns instead of raising (see :class:`RequestGuardInterceptor`)."""

    type_name: str
    reason: str


def safe_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserialize``, returning :class:`Undecodable` for bytes it cannot parse (a bad message, a string
    field that is not UTF-8) instead of raising, which gRPC would answer with UNKNOWN."""
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "") or "request"

    def deserialize_or_mark(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # anything the caller's bytes make the parser raise is the caller's fault
            return Undecodable(type_name, f"{type(exc).__name__}: {exc}")

    return deserialize_or_mark


def check_request(request: Any, method_name: str, index: int | None = None) -> None:
    """Raises InvalidInput for an undecodable request or one with a field over its cap (``index``: the
    position of a streamed message)."""
    prefix = "" if index is None else f"message {index}: "
    if isinstance(request, Undecodable):
        raise InvalidInput(
            f"{prefix}the request to {method_name} is not a valid {request.type_name} message "
            f"({brief(request.reason, 200)}); check the message type, and that every string field holds UTF-8"
        )
    if isinstance(request, Message) and request.DESCRIPTOR.full_name.startswith("couturier."):
        check_field_limits(request, prefix)


async def _checked_stream(requests: AsyncIterator[Any], method_name: str) -> AsyncIterator[Any]:
    index = 0
    async for request in requests:
        check_request(request, method_name, index)
        yield request
        index += 1


async def _relay(result: Any) -> AsyncIterator[Any]:
    """The items of a streaming handler's result (an async iterator, or a coroutine using context.write)."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result


class RequestGuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks every request before its handler runs: innermost in the chain, so what it raises is
    counted and mapped like a handler's error.

    * A request that cannot be parsed (e.g. a string field holding invalid UTF-8) becomes
      INVALID_ARGUMENT naming the method, not gRPC's UNKNOWN: every handler's request deserializer is
      wrapped by :func:`safe_deserializer`.
    * Every string, bytes and repeated field of a couturier message must be within its cap
      (``limits.FIELD_LIMITS`` and the defaults; :func:`validation.check_field_limits`), streamed
      messages included (checked one by one as the handler reads them).
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method_name: str = handler_call_details.method
        deserializer = handler.request_deserializer
        options: dict[str, Any] = {
            "request_deserializer": safe_deserializer(deserializer) if deserializer is not None else None,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            async def guarded_unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                check_request(request, method_name)
                return await unary_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(guarded_unary_unary, **options)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream

            async def guarded_unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                check_request(request, method_name)
                async for item in _relay(unary_stream(request, context)):
                    yield item

            return grpc.unary_stream_rpc_method_handler(guarded_unary_stream, **options)
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            async def guarded_stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await stream_unary(_checked_stream(requests, method_name), context)

            return grpc.stream_unary_rpc_method_handler(guarded_stream_unary, **options)
        stream_stream = handler.stream_stream

        async def guarded_stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for item in _relay(stream_stream(_checked_stream(requests, method_name), context)):
                yield item

        return grpc.stream_stream_rpc_method_handler(guarded_stream_stream, **options)
