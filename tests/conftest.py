"""Shared fixtures: services run for real on 127.0.0.1 (in-process grpc.aio servers or processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from couturier.services.common.server import ServiceHost
from couturier.services.registry import make_host


@pytest.fixture
async def skeleton_hosts() -> AsyncIterator[dict[str, ServiceHost]]:
    """The three backend services plus an orchestrator wired to them, each on its own port."""
    hosts = {key: make_host(key, port=0) for key in ("scoring", "latent", "retrieval")}
    for host in hosts.values():
        await host.start()
    hosts["orchestrator"] = make_host(
        "orchestrator",
        port=0,
        health_interval_s=0.1,
        **{f"{key}_target": hosts[key].address for key in ("scoring", "latent", "retrieval")},
    )
    await hosts["orchestrator"].start()
    yield hosts
    for host in hosts.values():
        await host.stop(grace_s=0)
