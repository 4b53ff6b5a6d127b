"""Domain errors and their mapping to gRPC status codes: the only place where that mapping lives.

Service code raises these (or lets a known library error through); the error interceptor turns
them into a status code with the error's message. Anything else becomes INTERNAL with an error id
that is logged next to the stack trace; callers never see a trace.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import grpc


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
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotYetImplemented, grpc.StatusCode.UNIMPLEMENTED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def map_exception(exc: BaseException) -> tuple[MappedStatus, str | None]:
    """Status for an exception, and an error id when the error is unexpected (INTERNAL)."""
    if isinstance(exc, DownstreamCallFailed):
        return MappedStatus(exc.code, str(exc)), None
    if isinstance(exc, grpc.aio.AioRpcError):
        # A downstream call failed: keep its code, say which call failed.
        return MappedStatus(exc.code(), f"downstream call failed: {exc.details()}"), None
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            message = str(exc) or error_type.__name__
            if code is grpc.StatusCode.DEADLINE_EXCEEDED and not isinstance(exc, CouturierError):
                message = "the call ran out of time; retry with a longer deadline or less work"
            return MappedStatus(code, message), None
    error_id = uuid.uuid4().hex[:12]
    return (
        MappedStatus(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); the service log has details"),
        error_id,
    )
