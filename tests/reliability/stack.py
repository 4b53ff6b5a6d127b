"""The four services over the fakes on 127.0.0.1, served from an event loop on a background thread,
and a health watchdog that asks every server's health service from another thread.

Running the servers on their own loop lets the fuzz tests call them with plain (synchronous) gRPC
channels from the test thread, crafting raw wire bytes, while the watchdog measures how fast health
answers from outside the servers' loop: a handler that blocks the loop shows as a slow health answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from couturier.services.client import product_batches
from couturier.services.common.images import encode_png
from couturier.services.common.server import ServiceHost
from couturier.services.registry import make_host
from couturier.v1 import common_pb2, orchestrator_pb2_grpc
from support.fakes import (
    FakeInferenceBackend,
    InMemoryImageStore,
    InMemoryVectorStore,
    write_tokenizer,
    write_user_table,
)
from support.hosts import HEALTH_INTERVAL_S, assert_serving, injected_host

T = TypeVar("T")

#: Users with trained vectors in the scoring service, and products indexed at start (id -> category).
USERS = ("u1", "u2", "u3")
PRODUCTS = {"p0": "shoes", "p1": "shoes", "p2": "bags", "p3": "tops"}


class LoopThread:
    """An asyncio event loop running on a daemon thread; :meth:`run` executes a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="servers-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class HealthWatchdog:
    """Asks ``Health.Check`` of every address every ``period_s`` (each with a ``limit_s`` deadline) from its
    own thread; every answer slower than ``limit_s`` or failed is kept in :attr:`problems`."""

    addresses: dict[str, str]
    limit_s: float = 1.0
    period_s: float = 0.05
    problems: list[str] = field(default_factory=list)
    checks: int = 0
    slowest_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        channels = {key: grpc.insecure_channel(address) for key, address in self.addresses.items()}
        stubs = {key: health_pb2_grpc.HealthStub(channel) for key, channel in channels.items()}
        try:
            while not self._stop.is_set():
                for key, stub in stubs.items():
                    started = time.perf_counter()
                    try:
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=self.limit_s)
                    except grpc.RpcError as exc:
                        self.problems.append(f"{key}: health check failed: {exc.code().name} {exc.details()}")
                    took = time.perf_counter() - started
                    self.checks += 1
                    self.slowest_s = max(self.slowest_s, took)
                    if took > self.limit_s:
                        self.problems.append(f"{key}: health answered after {took:.2f}s")
                self._stop.wait(self.period_s)
        finally:
            for channel in channels.values():
                channel.close()


@dataclass
class FuzzStack:
    """Scoring, retrieval, latent (over one fake backend and in-memory stores) and the orchestrator wired
    to them, on :attr:`loop`; :attr:`hosts` by service key."""

    loop: LoopThread
    hosts: dict[str, ServiceHost]
    backend: FakeInferenceBackend
    watchdog: HealthWatchdog

    @property
    def addresses(self) -> dict[str, str]:
        return {key: host.address for key, host in self.hosts.items()}

    def serving(self) -> dict[str, str]:
        """Each server's overall health status name."""
        result = {}
        for key, address in self.addresses.items():
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            result[key] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return result


def product_image(seed: int) -> bytes:
    import numpy as np

    return encode_png(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))


async def _start(work_dir: Path, backend: FakeInferenceBackend, **settings: Any) -> dict[str, ServiceHost]:
    import numpy as np

    theta = np.random.default_rng(0).normal(size=(len(USERS), backend.dims.item_dim)).astype(np.float32)
    write_user_table(work_dir / "user_vectors", "1", USERS, theta)
    tokenizer = write_tokenizer(work_dir / "tokenizer.json", "same but in red black".split())
    hosts: dict[str, ServiceHost] = {
        "scoring": injected_host(
            "scoring",
            backend=backend,
            store=InMemoryVectorStore("scoring"),
            user_vectors_dir=str(work_dir / "user_vectors"),
            **settings,
        ),
        "retrieval": injected_host(
            "retrieval",
            backend=backend,
            store=InMemoryVectorStore("retrieval"),
            images=InMemoryImageStore(),
            tokenizer_json=str(tokenizer),
            **settings,
        ),
        "latent": injected_host("latent", backend=backend, **settings),
    }
    for host in hosts.values():
        await host.start()
    hosts["orchestrator"] = make_host(
        "orchestrator",
        port=0,
        health_interval_s=HEALTH_INTERVAL_S,
        **{f"{key}_target": hosts[key].address for key in ("scoring", "latent", "retrieval")},
        **settings,
    )
    await hosts["orchestrator"].start()
    for host in hosts.values():
        await assert_serving(host, timeout_s=10)
    products = [
        (common_pb2.Product(product_id=pid, category=category), product_image(i))
        for i, (pid, category) in enumerate(PRODUCTS.items())
    ]
    async with grpc.aio.insecure_channel(hosts["orchestrator"].address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        await stub.IndexCatalogue(product_batches(products), timeout=30)
    return hosts


def start_stack(work_dir: Path, **settings: Any) -> FuzzStack:
    """The four services over the fakes (``settings``: overrides for every service), products PRODUCTS
    indexed, and a running watchdog."""
    loop = LoopThread()
    backend = FakeInferenceBackend()
    try:
        hosts = loop.run(_start(work_dir, backend, **settings))
    except BaseException:
        loop.close()
        raise
    watchdog = HealthWatchdog({key: host.address for key, host in hosts.items()})
    watchdog.start()
    return FuzzStack(loop, hosts, backend, watchdog)


def stop_stack(stack: FuzzStack) -> None:
    stack.watchdog.stop()

    async def stop() -> None:
        for host in reversed(list(stack.hosts.values())):
            await host.stop(grace_s=0)

    try:
        stack.loop.run(stop())
    finally:
        stack.loop.close()
