"""Faults heal by themselves (issue 13, item 3), the fast part: the reconcile diff, the per-store report of a
failed IndexCatalogue, ListProductIds, and channels that reconnect within a second of a server's return.

Real gRPC servers on 127.0.0.1 over the fakes of ``support.fakes`` (no models, no Triton): see
``test_faults_recovery.py`` for the same faults on the real stack.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image

from couturier.export.tools.indexing import diff_stores, failure_report, list_product_ids, reconcile
from couturier.services.client import CouturierClient, product_batches
from couturier.services.common import limits
from couturier.services.common.catalogue_index import (
    MAX_REPORTED_MISSING,
    MAX_REPORTED_MISSING_BYTES,
    REPORT_TRAILER,
    ReceivedIds,
    read_report,
    store_report,
)
from couturier.services.common.config import load_settings
from couturier.services.common.downstream import open_channel, reconnect_options
from couturier.services.common.errors import DependencyUnavailable, InvalidInput
from couturier.services.common.health import GrpcHealthProbe
from couturier.services.common.server import ServiceHost
from couturier.services.common.vectors import EmbeddingSpace, ProductVector
from couturier.services.registry import make_host
from couturier.v1 import catalogue_pb2, common_pb2, orchestrator_pb2
from support.fakes import FakeInferenceBackend, InMemoryImageStore, InMemoryVectorStore
from support.hosts import assert_serving, injected_host

# -- the reconcile diff (pure) ---------------------------------------------------------------------------


def test_diff_finds_what_each_store_lacks_and_holds_beyond_the_source() -> None:
    source = ["p1", "p2", "p3", "p4"]
    diffs = diff_stores(source, {"scoring": ["p1", "p2", "p3", "p4", "gone"], "retrieval": ["p1", "p3", "p3"]})
    scoring, retrieval = diffs["scoring"], diffs["retrieval"]
    assert (scoring.held, scoring.missing, scoring.orphans, scoring.duplicates) == (5, [], ["gone"], 0)
    assert (retrieval.held, retrieval.missing, retrieval.orphans, retrieval.duplicates) == (2, ["p2", "p4"], [], 1)
    assert retrieval.duplicated == ["p3"] and scoring.duplicated == []
    twice_gone = diff_stores(source, {"x": ["gone", "gone", "p1"]})["x"]  # an orphan held twice is deleted, not listed
    assert (twice_gone.orphans, twice_gone.duplicated, twice_gone.duplicates) == (["gone"], [], 1)


def test_diff_of_equal_stores_is_empty_and_keeps_source_order() -> None:
    source = ["b", "a", "c", "a"]  # a repeated source id counts once
    diffs = diff_stores(source, {"scoring": ["a", "b", "c"], "retrieval": []})
    assert not diffs["scoring"].missing and not diffs["scoring"].orphans
    assert diffs["retrieval"].missing == ["b", "a", "c"]


# -- the per-store report -------------------------------------------------------------------------------


def _message(ids: list[str], version: str = "") -> catalogue_pb2.IndexProductsRequest:
    return catalogue_pb2.IndexProductsRequest(
        encoder_version=version,
        products=[catalogue_pb2.ProductToIndex(product=common_pb2.Product(product_id=i)) for i in ids],
    )


def test_received_ids_are_distinct_in_arrival_order_and_capped() -> None:
    received = ReceivedIds(cap=3)
    received.add(_message(["a", "b", "a"], version="2"))
    received.add(_message(["c", "b", "d"], version="ignored"))
    assert received.ids == ["a", "b", "c"] and received.overflowed and received.encoder_version == "2"
    assert received.messages == 2


def test_store_report_counts_and_bounds_the_missing_list() -> None:
    received = [f"p{i}" for i in range(100)]
    report = store_report("retrieval", received, received[:40], "UNAVAILABLE: gone")
    assert (report.store, report.complete, report.indexed, report.missing_count) == ("retrieval", False, 40, 60)
    assert list(report.missing_product_ids) == received[40 : 40 + MAX_REPORTED_MISSING]
    assert report.error == "UNAVAILABLE: gone"
    complete = store_report("scoring", received, received)
    assert complete.complete and complete.indexed == 100 and complete.missing_count == 0
    long_ids = ["x" * 128 + str(i) for i in range(30)]
    bounded = store_report("scoring", long_ids, [])
    assert sum(len(i) for i in bounded.missing_product_ids) <= MAX_REPORTED_MISSING_BYTES
    assert bounded.missing_count == 30 and 0 < len(bounded.missing_product_ids) < MAX_REPORTED_MISSING


def test_worst_case_report_fits_the_trailers_with_the_status_message() -> None:
    """gRPC refuses trailers over 8 KiB (the caller would get RESOURCE_EXHAUSTED instead of the report)."""
    long_ids = [f"{i:03d}" + "\u00e9" * 125 for i in range(100)]  # 128 characters, 253 UTF-8 bytes each
    stores = [store_report(name, long_ids, [], "E" * 5000) for name in ("scoring", "retrieval")]
    report = orchestrator_pb2.IndexCatalogueResponse(received=10**6, stores=stores)
    encoded = len(base64.b64encode(report.SerializeToString()))
    assert encoded + len(REPORT_TRAILER) + limits.MAX_STATUS_MESSAGE_BYTES < 8 * 1024 - 512, encoded


def test_report_round_trips_through_the_trailers() -> None:
    report = orchestrator_pb2.IndexCatalogueResponse(received=3, stores=[store_report("scoring", ["a"], [])])
    trailers = (("other", "x"), (REPORT_TRAILER, report.SerializeToString()))
    assert read_report(trailers) == report
    assert read_report({REPORT_TRAILER: report.SerializeToString()}) == report
    assert read_report((("other", "x"),)) is None and read_report(None) is None


# -- real services over the fakes ------------------------------------------------------------------------


def png_bytes(seed: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class FakeCatalogue:
    """The fields of export.data.catalogue.Catalogue that indexing reads."""

    n: int
    product_ids: list[str] = field(init=False)
    category: np.ndarray = field(init=False)
    colour: np.ndarray = field(init=False)
    category_names: list[str] = field(default_factory=lambda: ["tops", "shoes"])
    colour_names: list[str] = field(default_factory=lambda: ["red"])
    images: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.product_ids = [f"p{i:04d}" for i in range(self.n)]
        self.category = np.arange(self.n) % 2
        self.colour = np.where(np.arange(self.n) % 3 == 0, -1, 0)
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(self.n)]

    def __len__(self) -> int:
        return self.n


class FailingStore(InMemoryVectorStore):
    """An in-memory store whose upserts fail (like an unreachable Milvus) after ``fail_after`` of them."""

    def __init__(self, name: str, fail_after: int) -> None:
        super().__init__(name)
        self.fail_after = fail_after

    async def upsert(self, space: EmbeddingSpace, items: Any) -> int:
        if self.calls["upsert"] >= self.fail_after:
            self.calls["upsert"] += 1
            raise DependencyUnavailable(f"cannot reach the {self.describe()}")
        return await super().upsert(space, items)


async def _start(hosts: dict[str, ServiceHost]) -> None:
    for host in hosts.values():
        await host.start()
    for key in ("scoring", "retrieval"):
        await assert_serving(hosts[key], timeout_s=5)


async def _stop(hosts: dict[str, ServiceHost]) -> None:
    for host in reversed(list(hosts.values())):
        await host.stop(grace_s=0)


def _stores(tmp_path: Any, retrieval_store: InMemoryVectorStore | None = None) -> dict[str, ServiceHost]:
    from support.fakes import write_tokenizer, write_user_table
    from support.plugin import FAKE_USERS, fake_user_theta

    backend = FakeInferenceBackend()
    write_user_table(tmp_path / "user_vectors", "1", FAKE_USERS, fake_user_theta(backend))
    return {
        "scoring": injected_host(
            "scoring",
            backend=backend,
            store=InMemoryVectorStore("scoring"),
            user_vectors_dir=str(tmp_path / "user_vectors"),
        ),
        "retrieval": injected_host(
            "retrieval",
            backend=backend,
            store=retrieval_store or InMemoryVectorStore("retrieval"),
            images=InMemoryImageStore(),
            tokenizer_json=str(write_tokenizer(tmp_path / "tokenizer.json", "same but in red".split())),
        ),
    }


async def _index(stub: Any, ids: list[str]) -> None:
    products = [(common_pb2.Product(product_id=i, category="tops"), png_bytes(n)) for n, i in enumerate(ids)]
    await stub.IndexProducts(iter(list(product_batches(products, 7))))


async def test_list_product_ids_pages_in_id_order_and_answers_which_ids_are_indexed(fake_hosts) -> None:
    async with CouturierClient(retrieval_target=fake_hosts["retrieval"].address) as client:
        empty = await client.retrieval.ListProductIds(catalogue_pb2.ListProductIdsRequest())
        assert list(empty.product_ids) == [] and not empty.next_page_token and empty.encoder.version == "1"
        ids = [f"id-{i:03d}" for i in range(25)]
        await _index(client.retrieval, ids[::-1])
        pages, token = [], ""
        while True:
            page = await client.retrieval.ListProductIds(
                catalogue_pb2.ListProductIdsRequest(page_size=10, page_token=token)
            )
            pages.append(list(page.product_ids))
            token = page.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [10, 10, 5] and [i for p in pages for i in p] == ids
        listed, version = await list_product_ids(client.retrieval)
        assert listed == ids and version == "1"
        asked = await client.retrieval.ListProductIds(
            catalogue_pb2.ListProductIdsRequest(product_ids=["id-007", "nope", "id-001", "id-007"])
        )
        assert list(asked.product_ids) == ["id-007", "id-001"] and not asked.next_page_token
        other = await client.retrieval.ListProductIds(catalogue_pb2.ListProductIdsRequest(encoder_version="9"))
        assert list(other.product_ids) == [] and other.encoder.version == "9"
        for bad, needle in (
            (catalogue_pb2.ListProductIdsRequest(page_size=limits.MAX_LIST_PAGE + 1), "page_size"),
            (catalogue_pb2.ListProductIdsRequest(page_size=-1), "page_size"),
            (catalogue_pb2.ListProductIdsRequest(product_ids=[""]), "product_ids[0]"),
            (catalogue_pb2.ListProductIdsRequest(product_ids=["a"], page_token="a"), "page_token"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.retrieval.ListProductIds(bad)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert needle in (caught.value.details() or "")


async def test_reconcile_repairs_diverged_stores_and_is_idempotent(tmp_path) -> None:
    catalogue = FakeCatalogue(30)
    hosts = _stores(tmp_path)
    try:
        await _start(hosts)
        async with CouturierClient(
            scoring_target=hosts["scoring"].address, retrieval_target=hosts["retrieval"].address
        ) as client:
            # scoring got everything plus two products the source no longer has; retrieval a third of it
            await _index(client.scoring, [*catalogue.product_ids, "old-1", "old-2"])
            await _index(client.retrieval, catalogue.product_ids[:10])
            dry = await reconcile(client, catalogue, dry_run=True)
            assert (dry["stores"]["scoring"]["orphans"], dry["stores"]["retrieval"]["missing"]) == (2, 20)
            assert dry["equal"] is False and dry["stores"]["retrieval"]["indexed"] == 0
            assert (await list_product_ids(client.retrieval))[0] == catalogue.product_ids[:10]  # nothing changed

            summary = await reconcile(client, catalogue)
            scoring, retrieval = summary["stores"]["scoring"], summary["stores"]["retrieval"]
            assert (scoring["held"], scoring["orphans"], scoring["deleted"], scoring["held_after"]) == (32, 2, 2, 30)
            assert scoring["orphan_ids"] == ["old-1", "old-2"] and scoring["indexed"] == 0
            assert (retrieval["held"], retrieval["missing"], retrieval["indexed"], retrieval["held_after"]) == (
                10,
                20,
                20,
                30,
            )
            assert summary["equal"] is True and summary["source"] == 30
            for store in (client.scoring, client.retrieval):
                assert (await list_product_ids(store))[0] == catalogue.product_ids

            again = await reconcile(client, catalogue)
            assert again["equal"] is True
            assert all(
                s["indexed"] == s["deleted"] == s["missing"] == s["orphans"] == 0 for s in again["stores"].values()
            )

            limited = await reconcile(client, catalogue, limit=25, dry_run=True)  # the source is what --limit says
            assert limited["stores"]["scoring"]["orphans"] == 5 and limited["equal"] is False
    finally:
        await _stop(hosts)


async def test_failed_index_catalogue_reports_what_landed_in_each_store(tmp_path) -> None:
    hosts = _stores(tmp_path, retrieval_store=FailingStore("retrieval", fail_after=2))
    ids = [f"p{i:03d}" for i in range(60)]
    products = [(common_pb2.Product(product_id=i, category="tops"), png_bytes(n)) for n, i in enumerate(ids)]
    try:
        for key in ("scoring", "retrieval"):
            await hosts[key].start()
        hosts["orchestrator"] = make_host(
            "orchestrator",
            port=0,
            health_interval_s=0.1,
            scoring_target=hosts["scoring"].address,
            retrieval_target=hosts["retrieval"].address,
            latent_target="127.0.0.1:9",  # not called by IndexCatalogue
        )
        await hosts["orchestrator"].start()
        async with CouturierClient(
            orchestrator_target=hosts["orchestrator"].address, retrieval_target=hosts["retrieval"].address
        ) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.orchestrator.IndexCatalogue(iter(list(product_batches(products, 10))))
            error = caught.value
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            details = error.details() or ""
            assert "retrieval.IndexProducts" in details and "retrieval holds 20 of" in details, details
            assert "couturier index --reconcile" in details
            report = failure_report(error)
            assert report is not None
            assert [s.store for s in report.stores] == ["scoring", "retrieval"]
            scoring, retrieval = report.stores
            assert (retrieval.complete, retrieval.indexed) == (False, 20)
            assert retrieval.missing_count == report.received - 20 and retrieval.missing_count > 0
            assert list(retrieval.missing_product_ids) == ids[20 : 20 + len(retrieval.missing_product_ids)]
            assert "UNAVAILABLE" in retrieval.error or "cannot reach" in retrieval.error
            # scoring was stopped when retrieval failed: whatever it holds is counted exactly
            held = set((await list_product_ids(client.retrieval))[0])
            assert held == set(ids[:20])
            assert scoring.indexed + scoring.missing_count == report.received
            assert scoring.complete == (scoring.missing_count == 0)
            assert not report.HasField("retrieval")
    finally:
        await _stop(hosts)


async def test_index_catalogue_success_reports_complete_stores(tmp_path) -> None:
    """Also: a catalogue stream may outlast rpc_timeout_s (the cap of unary calls); stream_timeout_s bounds
    it, in the orchestrator and in its downstream IndexProducts streams alike."""
    hosts = _stores(tmp_path)
    ids = [f"q{i:03d}" for i in range(15)]
    products = [(common_pb2.Product(product_id=i, category="shoes"), png_bytes(n)) for n, i in enumerate(ids)]

    async def slowly() -> Any:
        for message in product_batches(products, 4):
            await asyncio.sleep(0.5)  # 2 s in all, twice rpc_timeout_s
            yield message

    try:
        await _start(hosts)
        hosts["orchestrator"] = make_host(
            "orchestrator",
            port=0,
            rpc_timeout_s=1.0,
            stream_timeout_s=30.0,
            scoring_target=hosts["scoring"].address,
            retrieval_target=hosts["retrieval"].address,
            latent_target="127.0.0.1:9",
        )
        await hosts["orchestrator"].start()
        async with CouturierClient(orchestrator_target=hosts["orchestrator"].address) as client:
            reply = await client.orchestrator.IndexCatalogue(slowly())
        assert reply.received == 15 and reply.scoring.upserted == 15 and reply.retrieval.upserted == 15
        assert [(s.store, s.complete, s.indexed, s.missing_count) for s in reply.stores] == [
            ("scoring", True, 15, 0),
            ("retrieval", True, 15, 0),
        ]
    finally:
        await _stop(hosts)


def test_index_command_reconciles_and_prints_a_failed_indexing_report(tmp_path, monkeypatch) -> None:
    """``couturier index --reconcile [--dry-run]`` and ``couturier index`` after a failure, through the CLI:
    JSON on stdout, exit 1 while the stores differ or when indexing failed (services on their own loop)."""
    import json
    import threading
    from types import SimpleNamespace

    import typer
    from typer.testing import CliRunner

    from couturier.export.tools.indexing import register

    catalogue = FakeCatalogue(12)
    monkeypatch.setattr(
        "couturier.export.data.dataset.load_prepared", lambda data_dir=None: SimpleNamespace(catalogue=catalogue)
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    failing = FailingStore("retrieval", fail_after=0)  # every upsert fails until healed below
    hosts = _stores(tmp_path, retrieval_store=failing)
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    runner = CliRunner()
    try:
        on_loop(_start(hosts))
        hosts["orchestrator"] = make_host(
            "orchestrator",
            port=0,
            scoring_target=hosts["scoring"].address,
            retrieval_target=hosts["retrieval"].address,
            latent_target="127.0.0.1:9",
        )
        on_loop(hosts["orchestrator"].start())
        failed = runner.invoke(app, ["index", "--target", hosts["orchestrator"].address])
        assert failed.exit_code == 1, failed.output
        assert "error: indexing failed (UNAVAILABLE)" in failed.output
        # JSON on stdout; the services run in this process and their log lines (stderr) can land in .output
        report = json.loads(failed.stdout)
        assert report["received"] == "12" and [s["store"] for s in report["stores"]] == ["scoring", "retrieval"]
        assert report["stores"][1]["missing_count"] == "12" and report["stores"][1]["indexed"] == "0"

        targets = ["--scoring-target", hosts["scoring"].address, "--retrieval-target", hosts["retrieval"].address]
        dry = runner.invoke(app, ["index", "--reconcile", "--dry-run", *targets])
        assert dry.exit_code == 0, dry.output
        summary = json.loads(dry.stdout)
        assert summary["equal"] is False and summary["stores"]["retrieval"]["missing"] == 12
        still_failing = runner.invoke(app, ["index", "--reconcile", *targets])
        assert still_failing.exit_code == 1 and "error: reconcile failed (UNAVAILABLE)" in still_failing.output

        failing.fail_after = 10**9  # the store is back
        repaired = runner.invoke(app, ["index", "--reconcile", *targets])
        assert repaired.exit_code == 0, repaired.output
        summary = json.loads(repaired.stdout)
        assert summary["equal"] is True and summary["stores"]["retrieval"]["indexed"] == 12
        again = runner.invoke(app, ["index", "--reconcile", *targets])
        assert again.exit_code == 0 and json.loads(again.stdout)["stores"]["retrieval"]["indexed"] == 0
    finally:
        for host in reversed(list(hosts.values())):
            on_loop(host.stop(grace_s=0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# -- reconnect backoff ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _health_server(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    await server.start()
    return server


def test_reconnect_settings_have_one_source_and_are_checked() -> None:
    settings = load_settings("orchestrator")
    assert (
        settings.channel_options
        == reconnect_options()
        == [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 1000),
        ]
    )
    tuned = load_settings("scoring", reconnect_backoff_initial_ms=50, reconnect_backoff_max_ms=200)
    assert ("grpc.max_reconnect_backoff_ms", 200) in tuned.channel_options
    with pytest.raises(InvalidInput, match="exceeds reconnect_backoff_max_ms"):
        load_settings("latent", reconnect_backoff_initial_ms=900, reconnect_backoff_max_ms=500)
    with pytest.raises(ValueError):
        reconnect_options(0, 500, 1000)


async def test_channels_and_probes_see_a_restarted_server_within_a_second() -> None:
    """After a 2.5 s outage gRPC's default backoff waits until ~5 s (callers fail for ~2.5 s more after the
    server's return; measured 3.4 s after 6 s); the tuned channel and the health probe recover within 1 s."""
    port = _free_port()
    target = f"127.0.0.1:{port}"
    server = await _health_server(port)
    channel = open_channel(target, 1 << 20)
    stub = health_pb2_grpc.HealthStub(channel)
    probe = GrpcHealthProbe(target, timeout_s=0.5, reconnect=reconnect_options())
    try:
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert await probe() == f"{target} SERVING"
        await server.stop(0)
        failures = 0
        outage_end = time.perf_counter() + 2.5
        while time.perf_counter() < outage_end:  # callers keep calling through the outage
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                failures += 1
            with pytest.raises(ConnectionError):
                await probe()
            await asyncio.sleep(0.05)
        assert failures > 10
        server = await _health_server(port)
        back = time.perf_counter()

        async def first_success(call: Any) -> float:
            while True:
                try:
                    await call()
                    return time.perf_counter() - back
                except (grpc.aio.AioRpcError, ConnectionError):
                    await asyncio.sleep(0.01)

        channel_s, probe_s = await asyncio.wait_for(
            asyncio.gather(
                first_success(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)),
                first_success(probe),
            ),
            timeout=5,
        )
        assert channel_s < 1.0 and probe_s < 1.0, (channel_s, probe_s)
    finally:
        await probe.close()
        await channel.close()
        await server.stop(0)


async def test_the_triton_channel_reconnects_within_a_second() -> None:
    """TritonBackend's channel gets the reconnect arguments: a server that comes back on Triton's port
    (here a bare gRPC server, which answers UNIMPLEMENTED: connected) is reached within 1 s."""
    from tritonclient.utils import InferenceServerException

    from couturier.services.common.inference import TritonBackend

    port = _free_port()
    backend = TritonBackend(f"127.0.0.1:{port}", timeout_s=0.5)
    client = backend._get_client()

    async def status() -> str:
        try:
            await client.is_server_live(client_timeout=0.5)
        except InferenceServerException as exc:
            return str(exc.status())
        return "LIVE"

    server: grpc.aio.Server | None = None
    try:
        outage_end = time.perf_counter() + 2.5
        while time.perf_counter() < outage_end:
            assert "UNAVAILABLE" in await status()
            await asyncio.sleep(0.05)
        server = grpc.aio.server()
        assert server.add_insecure_port(f"127.0.0.1:{port}") == port
        await server.start()
        back = time.perf_counter()
        while "UNAVAILABLE" in await status():
            assert time.perf_counter() - back < 1.0, "Triton's channel still backs off"
            await asyncio.sleep(0.01)
        assert "UNIMPLEMENTED" in await status()
    finally:
        await backend.close()
        if server is not None:
            await server.stop(0)


@pytest.fixture(params=["lite", "server"])
async def real_store(request: pytest.FixtureRequest, tmp_path):
    """A VectorStore on milvus-lite in tmp_path, or in a database of its own on the session's Milvus server."""
    pytest.importorskip("milvus_lite")
    from couturier.services.common.vectors import VectorStore

    if request.param == "lite":
        store = VectorStore(str(tmp_path / "ids.db"))
        yield store
        await store.close()
        return
    import uuid

    from pymilvus import MilvusClient

    server_uri: str = request.getfixturevalue("milvus_server_uri")
    database = f"couturier_faults_{uuid.uuid4().hex[:10]}"
    admin = MilvusClient(server_uri)
    admin.create_database(database)
    store = VectorStore(f"{server_uri}/{database}")
    try:
        yield store
    finally:
        await store.close()
        scoped = MilvusClient(f"{server_uri}/{database}")
        for name in scoped.list_collections():
            scoped.drop_collection(name)
        scoped.close()
        admin.drop_database(database)
        admin.close()


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_vector_store_lists_ids_page_by_page(real_store) -> None:
    store = real_store
    space = EmbeddingSpace("item_encoder", "1", 4)
    assert await store.list_ids(space) == []  # nothing indexed yet
    ids = [f"p{i:03d}" for i in range(37)] + ['a"quote', "z/slash"]
    rng = np.random.default_rng(0)
    await store.ensure(space)
    await store.upsert(space, [ProductVector(i, rng.normal(size=4).astype(np.float32)) for i in reversed(ids)])
    await store.upsert(space, [ProductVector("p005", np.ones(4, np.float32))])  # replaced, not twice
    pages, after = [], ""
    while page := await store.list_ids(space, after=after, limit=10):
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [10, 10, 10, 9]
    assert [i for p in pages for i in p] == sorted(ids)
    assert await store.count(space) == len(ids)
    with pytest.raises(InvalidInput, match="limit"):
        await store.list_ids(space, limit=0)
