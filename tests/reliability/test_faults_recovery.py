"""Faults heal by themselves (issue 13, items 3 and 5), on the real stack: every service as its own process,
a real local Triton serving the session's trained models, milvus-lite files, gRPC on 127.0.0.1.

* kill -9 of the retrieval service while the orchestrator indexes the catalogue: the call fails with a
  per-store report; the service restarts on the same milvus-lite file; ``couturier index --reconcile``
  (:func:`~couturier.export.tools.indexing.reconcile`) leaves both stores holding exactly the source's
  products, none lost, none twice.
* Triton stopped and restarted while callers keep calling: within 1 s of Triton being ready again
  every caller succeeds, and no service process was restarted.

Tests run in file order on one stack (the second indexes what it needs itself).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from couturier.export.tools.indexing import catalogue_products, failure_report, list_product_ids, reconcile
from couturier.export.tools.launcher import ServiceProcess
from couturier.export.tools.stack import ServingStack
from couturier.services.client import CouturierClient, check_health, product_batches, wait_until_serving
from couturier.services.common.images import encode_png
from couturier.v1 import catalogue_pb2, common_pb2, retrieval_pb2, scoring_pb2
from support.trained import TrainedModels

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SERVICES = ("scoring", "latent", "retrieval", "orchestrator")


@dataclass
class FaultStack:
    serving: ServingStack
    catalogue: Any
    users: list[str]

    @property
    def services(self) -> Any:
        assert self.serving.services is not None
        return self.serving.services

    def client(self) -> CouturierClient:
        s = self.serving
        return CouturierClient(s.target("orchestrator"), s.target("scoring"), s.target("latent"), s.target("retrieval"))

    @property
    def source_ids(self) -> list[str]:
        return [str(self.catalogue.product_ids[i]) for i in range(len(self.catalogue))]

    def restart(self, key: str) -> None:
        """Starts service ``key`` again on its port, with the environment LocalStack gave it."""
        old: ServiceProcess = self.services.processes[key]
        env = {**os.environ, **self.services.extra_env, f"COUTURIER_{key.upper()}_PORT": str(old.port)}
        log_path = old.log_path.with_name(f"{key}-restarted.log")
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "couturier.services.cli", "serve", key],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.services.processes[key] = ServiceProcess(key, old.port, process, log_path)


@pytest.fixture(scope="module")
def stack(trained_models: TrainedModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    from couturier.export.data.dataset import load_prepared

    serving = ServingStack(
        repo_dir=trained_models.repo_dir,
        user_vectors_dir=trained_models.user_vectors_dir,
        work_dir=tmp_path_factory.mktemp("faults"),
        triton_home=Path("var/triton").absolute(),
    )
    try:
        asyncio.run(serving.start())
        prepared = load_prepared(trained_models.data_dir)
        yield FaultStack(serving, prepared.catalogue, [str(u) for u in prepared.interactions.user_ids])
    except BaseException:
        if serving.services is not None:
            for key in serving.services.processes:
                print(f"--- {key} log ---\n{serving.services.log_tail(key)}")
        raise
    finally:
        serving.stop()


async def _all_ids(client: CouturierClient) -> dict[str, list[str]]:
    return {
        "scoring": (await list_product_ids(client.scoring))[0],
        "retrieval": (await list_product_ids(client.retrieval))[0],
    }


async def test_kill_9_during_indexing_then_restart_and_reconcile(stack: FaultStack) -> None:
    started = time.perf_counter()
    source = stack.source_ids
    assert len(source) >= 160, "the session's catalogue is too small to kill a service mid-way"
    paused = asyncio.Event()
    resume = asyncio.Event()

    async def stream() -> AsyncIterator[catalogue_pb2.IndexProductsRequest]:
        for n, message in enumerate(product_batches(catalogue_products(stack.catalogue), 16)):
            if n == 6:  # 96 products sent; the rest after the kill
                paused.set()
                await resume.wait()
            yield message

    victim = stack.services.processes["retrieval"]
    async with stack.client() as client:
        call = asyncio.ensure_future(client.orchestrator.IndexCatalogue(stream(), timeout=300))
        await asyncio.wait_for(paused.wait(), timeout=60)
        deadline = time.perf_counter() + 60
        while (await client.retrieval.GetIndexStats(catalogue_pb2.GetIndexStatsRequest())).products < 32:
            assert time.perf_counter() < deadline, "retrieval indexed nothing within 60 s"
            await asyncio.sleep(0.05)
        os.kill(victim.process.pid, signal.SIGKILL)  # while its IndexProducts stream is open
        assert victim.process.wait(timeout=10) == -signal.SIGKILL
        resume.set()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    failed = caught.value
    assert failed.code() == grpc.StatusCode.UNAVAILABLE, failed.details()
    details = failed.details() or ""
    assert "retrieval.IndexProducts" in details and "What landed" in details, details
    report = failure_report(failed)
    assert report is not None, details
    assert report.received >= 96
    stores = {s.store: s for s in report.stores}
    assert stores["retrieval"].missing_count == -1 and "not checked" in stores["retrieval"].error  # it was dead
    assert stores["scoring"].missing_count >= 0  # scoring was asked: exact counts
    assert stores["scoring"].indexed + stores["scoring"].missing_count == report.received

    stack.restart("retrieval")  # same port, same milvus-lite file and image folder
    await wait_until_serving(stack.serving.target("retrieval"), timeout_s=60)
    restarted = time.perf_counter()
    async with stack.client() as client:
        held = await _all_ids(client)
        assert len(held["retrieval"]) < len(source) and len(held["scoring"]) < len(source)  # partial

        summary = await reconcile(client, stack.catalogue)
        for name in ("scoring", "retrieval"):
            store = summary["stores"][name]
            assert store["indexed"] == store["missing"] == len(source) - store["held"], summary
            assert store["orphans"] == store["deleted"] == store["duplicates"] == 0, summary
            assert store["held_after"] == len(source) and store["duplicates_after"] == 0, summary
        assert summary["equal"] is True

        after = await _all_ids(client)
        for name, ids in after.items():
            assert ids == sorted(source), f"{name}: {len(set(source) - set(ids))} lost"  # none lost, each once
            stats = await getattr(client, name).GetIndexStats(catalogue_pb2.GetIndexStatsRequest())
            assert stats.products == len(source), f"{name} counts {stats.products} rows for {len(source)} products"
        again = await reconcile(client, stack.catalogue)  # idempotent
        assert again["equal"] and all(s["indexed"] == s["deleted"] == 0 for s in again["stores"].values())
        # the orchestrator follows the restarted service (its probes reconnect at once)
        deadline = time.perf_counter() + 10
        while await check_health(stack.serving.target("orchestrator")) != "SERVING":
            assert time.perf_counter() < deadline, "the orchestrator did not see retrieval come back"
            await asyncio.sleep(0.1)
        hits = await client.retrieval.SearchByImage(
            retrieval_pb2.SearchByImageRequest(image=_png(stack, 0), k=3), timeout=30
        )
        assert len(hits.hits) == 3
    print(
        f"kill -9 mid-index: received {report.received}, scoring held {len(held['scoring'])}, retrieval "
        f"held {len(held['retrieval'])} after restart; reconcile + checks {time.perf_counter() - restarted:.1f} s; "
        f"test {time.perf_counter() - started:.1f} s"
    )


def _png(stack: FaultStack, row: int) -> common_pb2.ImagePayload:
    return common_pb2.ImagePayload(data=encode_png(stack.catalogue.images[row]), mime_type="image/png")


@dataclass
class Caller:
    """Calls one light RPC in a loop, recording (time, outcome) until stopped."""

    name: str
    call: Any
    outcomes: list[tuple[float, str]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.call()
                self.outcomes.append((time.perf_counter(), "OK"))
                await asyncio.sleep(0.05)
            except grpc.aio.AioRpcError as exc:
                self.outcomes.append((time.perf_counter(), exc.code().name))
                await asyncio.sleep(0.02)

    def first_ok_after(self, t: float) -> float | None:
        return next((at - t for at, outcome in self.outcomes if at >= t and outcome == "OK"), None)

    def failures_after(self, t: float) -> list[tuple[float, str]]:
        return [(round(at - t, 3), outcome) for at, outcome in self.outcomes if at >= t and outcome != "OK"]


async def test_triton_restarted_under_load_callers_recover_within_1s_without_service_restarts(
    stack: FaultStack,
) -> None:
    started = time.perf_counter()
    triton = stack.serving.triton
    assert triton is not None
    pids = {key: stack.services.processes[key].process.pid for key in SERVICES}
    user = common_pb2.Audience(user=common_pb2.UserRef(user_id=stack.users[0]))
    async with stack.client() as client:
        indexed = product_batches(catalogue_products(stack.catalogue, 16), 16)
        await client.retrieval.IndexProducts(iter(list(indexed)), timeout=60)  # searches need an index
        callers = [
            Caller(
                f"scoring-{i}",
                lambda i=i: client.scoring.ScoreItems(
                    scoring_pb2.ScoreItemsRequest(audience=user, items=[common_pb2.ItemSource(image=_png(stack, i))]),
                    timeout=2,
                ),
            )
            for i in range(2)
        ] + [
            Caller(
                f"retrieval-{i}",
                lambda i=i: client.retrieval.SearchByImage(
                    retrieval_pb2.SearchByImageRequest(image=_png(stack, i), k=3), timeout=2
                ),
            )
            for i in range(2)
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(c.run(stop)) for c in callers]
        try:
            await asyncio.sleep(1.0)
            assert all(c.first_ok_after(started) is not None for c in callers), "callers fail before the outage"
            port = triton.grpc_port
            await asyncio.to_thread(triton.stop, 2.0)
            down = time.perf_counter()
            await asyncio.sleep(3.0)  # an outage long enough to grow gRPC's default backoff to seconds
            assert all(c.failures_after(down) for c in callers), "callers did not notice Triton's outage"
            await asyncio.to_thread(stack.serving.start_triton, port)
            ready = time.perf_counter()
            await asyncio.sleep(3.0)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        health = {key: await check_health(stack.serving.target(key)) for key in SERVICES}

    recovery = {c.name: c.first_ok_after(ready) for c in callers}
    late = {c.name: [f for f in c.failures_after(ready) if f[0] > 1.0] for c in callers}
    print(
        f"Triton outage {ready - down:.1f} s; first success after ready: "
        + ", ".join(f"{n} {s:.3f} s" if s is not None else f"{n} never" for n, s in recovery.items())
        + f"; failures after ready: {sum(len(c.failures_after(ready)) for c in callers)}"
        + f"; codes {sorted({o for c in callers for _, o in c.outcomes})}"
        + f"; test {time.perf_counter() - started:.1f} s"
    )
    assert all(s is not None and s < 1.0 for s in recovery.values()), recovery
    assert not any(late.values()), late
    codes = {outcome for c in callers for _, outcome in c.outcomes if outcome != "OK"}
    assert not codes & {"INTERNAL", "UNKNOWN"}, codes  # an outage is UNAVAILABLE, never INTERNAL or UNKNOWN
    assert {key: stack.services.processes[key].process.pid for key in SERVICES} == pids
    assert all(stack.services.processes[key].process.poll() is None for key in SERVICES)
    assert health == dict.fromkeys(SERVICES, "SERVING"), health
