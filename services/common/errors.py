"""Domain errors and their mapping to gRPC status codes: the only place where that mapping lives.

Service code raises these (or lets a known library error through); the error interceptor turns
them into a status code with the error's message. Dependency errors that reach here unconverted
(a gRPC error of a dependency's client, a pymilvus exception) are mapped by their code. Anything
else becomes INTERNAL with an error id that is logged next to the stack trace; callers never see a
trace. Every message is capped (:func:`status_message`), and caller values quoted in messages go
through :func:`brief`, so no request can make an answer or a log line large.
"""

from __future__ import annotations

import asyncio
import reprlib
import uuid
from dataclasses import dataclass

import grpc

from couturier.services.common import limits


class CouturierError(Exception):
    """Base of errors whose message is written for the caller (say what to change)."""


class InvalidInput(CouturierError):
    """The request itself is wrong: a field out of range, a corrupt or oversized image, NaN."""


class UnknownEntity(CouturierError):
    """An id the request names does not exist (user, product, category, model)."""


class PreconditionFailed(CouturierError):
    """The request is valid but the system is not in a state to serve it (e.g. mixed model versions)."""


class DependencyUnavailable(CouturierError):
    """A dependency (Triton, Milvus, a downstream service) cannot be reached or is not ready."""


class ResourceExhausted(CouturierError):
    """A dependency is out of a resource (queue full, memory, rate limit, message size): retry later or
    with less work."""


class DependencyFailed(CouturierError):
    """A dependency failed in a way no other error describes (e.g. a model crashed in Triton): INTERNAL,
    with an error id logged next to the trace."""


class Unauthenticated(CouturierError):
    """The call carries no valid credentials (a missing or unknown bearer token)."""


class DeadlineExpired(CouturierError):
    """The call's deadline passed before the work finished."""


class NotYetImplemented(CouturierError):
    """The operation is part of the contract but not served by this build."""


class DownstreamCallFailed(CouturierError):
    """A call to another couturier service failed: keeps its status code and names the failed step."""

    def __init__(self, step: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{step} failed ({code.name}): {details}")
        self.step = step
        self.code = code


@dataclass(frozen=True)
class MappedStatus:
    code: grpc.StatusCode
    message: str


# Order matters only between a class and its subclasses: the first isinstance match wins.
_STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownEntity, grpc.StatusCode.NOT_FOUND),
    (PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (DependencyUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (NotYetImplemented, grpc.StatusCode.UNIMPLEMENTED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def clip(text: str, limit: int = limits.MAX_STATUS_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters cut]"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = limits.MAX_QUOTED_CHARS
_REPR.maxlevel = 2


def brief(value: object, limit: int = limits.MAX_QUOTED_CHARS) -> str:
    """A bounded repr of a caller value for a message or a log line (long strings say their length)."""
    if isinstance(value, str | bytes):
        if len(value) <= limit:
            return repr(value)
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    return clip(_REPR.repr(value), limit)


def status_message(text: str) -> str:
    """A status message within MAX_STATUS_MESSAGE_CHARS characters and MAX_STATUS_MESSAGE_BYTES UTF-8
    bytes (it travels in the trailers, whose size gRPC limits)."""
    text = clip(text)
    encoded = text.encode("utf-8", "replace")
    if len(encoded) > limits.MAX_STATUS_MESSAGE_BYTES:
        text = encoded[: limits.MAX_STATUS_MESSAGE_BYTES].decode("utf-8", "ignore") + "... [cut]"
    return text


#: pymilvus error codes (MilvusException.code: the server's merr codes; compatible_code: the legacy
#: ErrorCode enum) that mean a resource ran out (memory, disk, queue, rate or quota limits).
_MILVUS_EXHAUSTED_CODES = frozenset({3, 4, 7, 8, 9})
_MILVUS_EXHAUSTED_LEGACY = frozenset({49, 53, 54})  # RateLimit, MemoryQuotaExhausted, DiskQuotaExhausted
_MILVUS_NOT_READY_LEGACY = frozenset({56})  # NotReadyServe


def _internal(message: str) -> tuple[MappedStatus, str]:
    error_id = uuid.uuid4().hex[:12]
    text = f"{clip(message, limits.MAX_STATUS_MESSAGE_CHARS // 2)} (error id {error_id}); the service log has details"
    return MappedStatus(grpc.StatusCode.INTERNAL, status_message(text)), error_id


def _dependency_status(exc: BaseException) -> tuple[MappedStatus, str | None] | None:
    """The status of a dependency client's own error (a sync gRPC error, a pymilvus exception), if it is one."""
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):  # a dependency's sync gRPC client
        code = exc.code()
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        text = f"a dependency call failed ({getattr(code, 'name', code)}): {details or ''}"
        if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return MappedStatus(code, status_message(text)), None
        return _internal(text)
    if type(exc).__module__.split(".")[0] == "pymilvus" and hasattr(exc, "code"):
        code, legacy = getattr(exc, "code", None), getattr(exc, "compatible_code", None)
        text = f"the vector store (Milvus) failed (code {code}): {getattr(exc, 'message', '') or exc}"
        if code in _MILVUS_EXHAUSTED_CODES or legacy in _MILVUS_EXHAUSTED_LEGACY:
            return MappedStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, status_message(text)), None
        if legacy in _MILVUS_NOT_READY_LEGACY or getattr(exc, "retriable", False):
            return MappedStatus(grpc.StatusCode.UNAVAILABLE, status_message(text)), None
        if getattr(exc, "is_input_error", False):
            return MappedStatus(grpc.StatusCode.INVALID_ARGUMENT, status_message(text)), None
        return _internal(text)
    return None


def map_exception(exc: BaseException) -> tuple[MappedStatus, str | None]:
    """Status for an exception, and an error id when the error is unexpected (INTERNAL).

    The message is capped by :func:`status_message`."""
    if isinstance(exc, DownstreamCallFailed):
        return MappedStatus(exc.code, status_message(str(exc))), None
    if isinstance(exc, grpc.aio.AioRpcError):
        # A downstream call failed: keep its code, say which call failed.
        return MappedStatus(exc.code(), status_message(f"downstream call failed: {exc.details()}")), None
    if isinstance(exc, DependencyFailed):
        return _internal(str(exc) or type(exc).__name__)
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            message = str(exc) or error_type.__name__
            if code is grpc.StatusCode.DEADLINE_EXCEEDED and not isinstance(exc, CouturierError):
                message = "the call ran out of time; retry with a longer deadline or less work"
            return MappedStatus(code, status_message(message)), None
    dependency = _dependency_status(exc)
    if dependency is not None:
        return dependency
    error_id = uuid.uuid4().hex[:12]
    return (
        MappedStatus(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); the service log has details"),
        error_id,
    )
