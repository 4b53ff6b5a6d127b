"""Calls from one couturier service to another: channels, deadline propagation, error naming.

Also the one place that says how every channel a service opens reconnects (to other couturier
services, to Triton, and the orchestrator's health probes): :func:`reconnect_options`. gRPC's own
defaults (first retry after 1 s, growing x1.6 up to 120 s, 20 s to connect) left callers failing with
a stale "Connection refused" for seconds after a back end came back; these values (settings
``reconnect_backoff_initial_ms``, ``reconnect_backoff_max_ms``, ``connect_timeout_ms``) bound that
to about half a second. See docs/deployment.md, "Reconnecting after an outage".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc

from couturier.services.common.errors import DeadlineExpired, DownstreamCallFailed
from couturier.services.common.security import BearerTokenInterceptor

T = TypeVar("T")

#: First wait before reconnecting to a back end that refused or dropped the connection (gRPC: 1000).
RECONNECT_BACKOFF_INITIAL_MS: Final = 100
#: Longest wait between reconnection attempts, however long the outage (gRPC: 120000). Each wait is
#: jittered by +-20 %, so a caller sees a returned back end within about 1.2 x this.
RECONNECT_BACKOFF_MAX_MS: Final = 500
#: How long one connection attempt may take before the next one starts (gRPC: 20000; its
#: ``grpc.min_reconnect_backoff_ms``): bounds recovery when a back end's address stops answering
#: instead of refusing (a replaced pod).
CONNECT_TIMEOUT_MS: Final = 1000

ChannelOptions = list[tuple[str, Any]]


def reconnect_options(
    initial_backoff_ms: int = RECONNECT_BACKOFF_INITIAL_MS,
    max_backoff_ms: int = RECONNECT_BACKOFF_MAX_MS,
    connect_timeout_ms: int = CONNECT_TIMEOUT_MS,
) -> ChannelOptions:
    """gRPC channel arguments that bound how long a channel waits before reconnecting."""
    if not 0 < initial_backoff_ms <= max_backoff_ms:
        raise ValueError(f"reconnect backoff needs 0 < initial ({initial_backoff_ms} ms) <= max ({max_backoff_ms} ms)")
    if connect_timeout_ms <= 0:
        raise ValueError(f"connect_timeout_ms must be positive, got {connect_timeout_ms}")
    return [
        ("grpc.initial_reconnect_backoff_ms", int(initial_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", int(max_backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", int(connect_timeout_ms)),
    ]


@dataclass(frozen=True)
class ChannelSecurity:
    """How a channel to a couturier service is protected (all empty: plaintext, no token).

    ``credentials``: TLS (security.channel_credentials); ``server_name``: the name the server's certificate
    is checked against when it is not the target's host; ``token``: a bearer token sent on every call."""

    credentials: grpc.ChannelCredentials | None = None
    server_name: str = ""
    token: str = ""


def open_channel(
    target: str,
    max_message_bytes: int,
    reconnect: ChannelOptions | None = None,
    security: ChannelSecurity | None = None,
) -> grpc.aio.Channel:
    """A channel that spreads calls over every address the target resolves to.

    With a headless Kubernetes Service (``dns:///scoring.ns.svc.cluster.local:50051``) each pod is
    one address; round robin plus the servers' ``max_connection_age`` keeps load spread as pods
    come and go. ``reconnect``: :func:`reconnect_options` (default: its defaults); ``security``: TLS
    and a bearer token (default: plaintext, no token).
    """
    security = security or ChannelSecurity()
    options: ChannelOptions = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        *(reconnect_options() if reconnect is None else reconnect),
    ]
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    interceptors = [BearerTokenInterceptor(security.token)] if security.token else None
    if security.credentials is not None:
        return grpc.aio.secure_channel(target, security.credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def remaining_s(context: grpc.aio.ServicerContext, cap_s: float) -> float:
    """Seconds a downstream call may take: the caller's remaining deadline, at most ``cap_s``."""
    left = context.time_remaining()
    if left is None:
        return cap_s
    if left <= 0:
        raise DeadlineExpired("the call's deadline passed before the next step could start")
    return min(float(left), cap_s)


@asynccontextmanager
async def step(name: str) -> AsyncIterator[None]:
    """Turns a failed downstream call into a DownstreamCallFailed that names ``name`` and keeps its code."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise DownstreamCallFailed(name, exc.code(), exc.details() or "") from None


async def all_or_nothing(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs the coroutines concurrently; the first failure cancels the rest and is raised as it is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


class Stubs:
    """Stubs of other services over channels opened on first use (a grpc.aio channel belongs to the
    event loop running when it is created, so none is opened before the server's loop runs)."""

    def __init__(
        self,
        targets: dict[str, str],
        stub_types: dict[str, Any],
        max_message_bytes: int,
        reconnect: ChannelOptions | None = None,
        security: ChannelSecurity | None = None,
    ) -> None:
        self._targets = targets
        self._types = stub_types
        self._size = max_message_bytes
        self._reconnect = reconnect
        self._security = security
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._stubs:
            self._channels[name] = open_channel(self._targets[name], self._size, self._reconnect, self._security)
            self._stubs[name] = self._types[name](self._channels[name])
        return self._stubs[name]

    async def close(self) -> None:
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        await asyncio.gather(*(channel.close() for channel in channels))
