"""The real stack on a real Milvus server (issue 13): sustained load, and the server restarted under load.

Every service runs as its own process over the session's trained models and a local Triton; scoring and
retrieval keep their vectors on the session's Milvus standalone server (``ServingStack(store="server")``,
each in a database of its own), the catalogue indexed once for the module.

* 64 clients for 60 s: each client (its own channel) calls one of Recommend, ScoreItems, SearchByImage and
  GetProducts back to back; no call fails or answers wrongly, every client keeps making progress, and the
  p50 / p99 latency of each RPC is printed and written to ``load_64_clients.json`` in the test's tmp dir
  (also a ``load_64_clients`` user property of the JUnit report).
* The Milvus server stopped and started again (same data directory) while callers keep calling: during
  the outage the calls that need Milvus fail with UNAVAILABLE (never INTERNAL or UNKNOWN), ScoreItems of an
  uploaded image (no Milvus) keeps working, scoring and retrieval report NOT_SERVING while latent keeps
  SERVING; once the server answers again every caller succeeds within RECOVERY_BOUND_S and health is
  SERVING again, no service process was restarted, and both stores hold the same rows and give the same
  answers as before.

Tests run in file order on one stack (the restart last: a failure there leaves the load test's numbers).
The restart test needs the Milvus server this session started (see ``tests/reliability/conftest.py``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from couturier.export.tools.indexing import index_catalogue, list_product_ids
from couturier.export.tools.milvus_server import PORT
from couturier.export.tools.stack import ServingStack
from couturier.services.client import CouturierClient, check_health
from couturier.services.common.images import encode_png
from couturier.v1 import catalogue_pb2, common_pb2, retrieval_pb2, scoring_pb2
from support.trained import TrainedModels

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SERVICES = ("scoring", "latent", "retrieval", "orchestrator")
#: Services that keep vectors in Milvus (health NOT_SERVING while it is down).
STORE_SERVICES = ("scoring", "retrieval")


@dataclass
class ServerStack:
    serving: ServingStack
    catalogue: Any
    users: list[str]
    pngs: list[common_pb2.ImagePayload]

    @property
    def services(self) -> Any:
        assert self.serving.services is not None
        return self.serving.services

    @property
    def product_ids(self) -> list[str]:
        return [str(i) for i in self.catalogue.product_ids]

    def client(self) -> CouturierClient:
        s = self.serving
        return CouturierClient(s.target("orchestrator"), s.target("scoring"), s.target("latent"), s.target("retrieval"))

    def pids(self) -> dict[str, int]:
        return {key: self.services.processes[key].process.pid for key in SERVICES}

    async def health(self) -> dict[str, str]:
        result = {}
        for key in SERVICES:
            try:
                result[key] = await check_health(self.serving.target(key), timeout_s=2.0)
            except grpc.aio.AioRpcError as exc:
                result[key] = f"health {exc.code().name}"
        return result


@pytest.fixture(scope="module")
def stack(
    trained_models: TrainedModels, milvus_server_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerStack]:
    from couturier.export.data.dataset import load_prepared

    serving = ServingStack(
        repo_dir=trained_models.repo_dir,
        user_vectors_dir=trained_models.user_vectors_dir,
        work_dir=tmp_path_factory.mktemp("server-stack"),
        triton_home=Path("var/triton").absolute(),
        store="server",
        milvus_uri=milvus_server_uri,  # the session's server, whoever started it; the stack adds its databases
    )
    try:
        asyncio.run(serving.start(timeout_s=180))
        prepared = load_prepared(trained_models.data_dir)
        catalogue = prepared.catalogue
        pngs = [
            common_pb2.ImagePayload(data=encode_png(catalogue.images[row]), mime_type="image/png")
            for row in range(len(catalogue))
        ]
        assert prepared.interactions is not None
        built = ServerStack(serving, catalogue, [str(u) for u in prepared.interactions.user_ids], pngs)

        async def index() -> None:
            async with built.client() as client:
                response = await index_catalogue(client, catalogue, progress=False, timeout_s=300)
            assert response.scoring.total == response.retrieval.total == len(catalogue)

        asyncio.run(index())
        yield built
    except BaseException:
        if serving.services is not None:
            for key in serving.services.processes:
                print(f"--- {key} log ---\n{serving.services.log_tail(key)}")
        raise
    finally:
        serving.stop()


# -- requests ----------------------------------------------------------------------------------------------

#: Each RPC: (service, request for client number i, check of the answer: "" when right, else what is wrong).
Rpc = Callable[[CouturierClient, int, float], Awaitable[str]]


def _rpcs(stack: ServerStack) -> dict[str, Rpc]:
    ids, users, pngs = stack.product_ids, stack.users, stack.pngs

    async def recommend(client: CouturierClient, i: int, timeout: float) -> str:
        request = scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id=users[i % len(users)]), k=10)
        reply = await client.scoring.Recommend(request, timeout=timeout)
        return "" if len(reply.products) == 10 else f"{len(reply.products)} products for k=10"

    async def score_items(client: CouturierClient, i: int, timeout: float) -> str:
        items = [common_pb2.ItemSource(product_id=ids[(8 * i + j) % len(ids)]) for j in range(8)]
        audience = common_pb2.Audience(user=common_pb2.UserRef(user_id=users[i % len(users)]))
        reply = await client.scoring.ScoreItems(
            scoring_pb2.ScoreItemsRequest(audience=audience, items=items), timeout=timeout
        )
        scores = [s.score for s in reply.scores]
        return "" if len(scores) == 8 and np.isfinite(scores).all() else f"scores {scores} for 8 items"

    async def search_by_image(client: CouturierClient, i: int, timeout: float) -> str:
        reply = await client.retrieval.SearchByImage(
            retrieval_pb2.SearchByImageRequest(image=pngs[(7 * i) % len(pngs)], k=10), timeout=timeout
        )
        return "" if len(reply.hits) == 10 else f"{len(reply.hits)} hits for k=10"

    async def get_products(client: CouturierClient, i: int, timeout: float) -> str:
        wanted = [ids[(4 * i + j) % len(ids)] for j in range(4)]
        reply = await client.retrieval.GetProducts(
            retrieval_pb2.GetProductsRequest(product_ids=wanted), timeout=timeout
        )
        got = [p.product.product_id for p in reply.products]
        return "" if got == wanted and not reply.not_found else f"got {got}, not found {list(reply.not_found)}"

    return {
        "Recommend": recommend,
        "ScoreItems": score_items,
        "SearchByImage": search_by_image,
        "GetProducts": get_products,
    }


# -- 64 clients for 60 s ---------------------------------------------------------------------------------

CLIENTS = 64
LOAD_S = 60.0
#: Per-call deadline: a call slower than this is an error (DEADLINE_EXCEEDED).
CALL_TIMEOUT_S = 10.0
#: Every client completes a call in each window of this length (no client starves).
PROGRESS_WINDOW_S = 10.0
#: A loose ceiling on any RPC's p99 under this load on the 2-core CI machine (measured there: see the
#: printed numbers; well above them, it catches a stall such as a blocked event loop or a serialised store,
#: not a few percent of slowdown).
P99_CEILING_S = 5.0


@dataclass
class LoadClient:
    rpc: str
    index: int
    latencies: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def run(self, stack: ServerStack, call: Rpc, until: float) -> None:
        s = stack.serving
        key = "scoring" if self.rpc in ("Recommend", "ScoreItems") else "retrieval"
        async with CouturierClient(**{f"{key}_target": s.target(key)}) as client:  # a channel of its own
            while time.perf_counter() < until:
                started = time.perf_counter()
                try:
                    wrong = await call(client, self.index, CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    wrong = f"{exc.code().name}: {exc.details()}"
                ended = time.perf_counter()
                if wrong:
                    self.errors.append(f"{self.rpc} client {self.index} at {ended:.1f}: {wrong}")
                else:
                    self.latencies.append(ended - started)
                self.finished.append(ended)


def _percentiles(latencies: list[float]) -> dict[str, float]:
    values = np.asarray(latencies)
    return {
        "calls": len(values),
        "p50_ms": round(float(np.percentile(values, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(values, 99)) * 1000, 1),
        "max_ms": round(float(values.max()) * 1000, 1),
    }


async def test_64_clients_for_60_s_get_no_errors_and_p99_is_reported(
    stack: ServerStack, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    started = time.perf_counter()
    rpcs = _rpcs(stack)
    names = list(rpcs)
    clients = [LoadClient(names[n % len(names)], n // len(names)) for n in range(CLIENTS)]
    pids = stack.pids()
    health_seen: list[tuple[float, dict[str, str]]] = []

    async def watch_health(stop: asyncio.Event) -> None:
        while not stop.is_set():
            health_seen.append((time.perf_counter(), await stack.health()))
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass

    # every RPC answers right once before the clock starts (channels up, collections loaded)
    async with stack.client() as warm:
        for name, call in rpcs.items():
            assert await call(warm, 0, 30.0) == "", name
    load_start = time.perf_counter()
    until = load_start + LOAD_S
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_health(stop))
    try:
        await asyncio.gather(*(c.run(stack, rpcs[c.rpc], until) for c in clients))
    finally:
        stop.set()
        await watcher
    load_s = time.perf_counter() - load_start

    summary: dict[str, Any] = {"clients": CLIENTS, "seconds": round(load_s, 1), "rpcs": {}}
    for name in names:
        mine = [c for c in clients if c.rpc == name]
        latencies = [x for c in mine for x in c.latencies]
        summary["rpcs"][name] = {
            "clients": len(mine),
            **(_percentiles(latencies) if latencies else {"calls": 0}),
            "errors": sum(len(c.errors) for c in mine),
            "per_s": round(len(latencies) / load_s, 1),
        }
    errors = [e for c in clients for e in c.errors]
    not_serving = [(round(t - load_start, 1), h) for t, h in health_seen if set(h.values()) != {"SERVING"}]
    summary["errors"] = len(errors)
    summary["health_checks"] = len(health_seen)
    summary["health_not_serving"] = len(not_serving)
    (tmp_path / "load_64_clients.json").write_text(json.dumps(summary, indent=2))
    record_property("load_64_clients", json.dumps(summary))
    print(
        f"\n64 clients for {load_s:.1f} s, {len(errors)} errors; health not SERVING in {len(not_serving)} of "
        f"{len(health_seen)} checks\n"
        + "\n".join(
            f"  {name:13s} {r['calls']:6d} calls {r['per_s']:6.1f}/s  p50 {r.get('p50_ms', 0):7.1f} ms  "
            f"p99 {r.get('p99_ms', 0):7.1f} ms  max {r.get('max_ms', 0):7.1f} ms  errors {r['errors']}"
            for name, r in summary["rpcs"].items()
        )
        + f"\n  written to {tmp_path / 'load_64_clients.json'}; test {time.perf_counter() - started:.1f} s"
    )

    assert not errors, f"{len(errors)} errors, first: {errors[:5]}"
    windows = int(LOAD_S // PROGRESS_WINDOW_S)
    starved = {
        f"{c.rpc}-{c.index}": w
        for c in clients
        for w in range(windows)
        if not any(
            load_start + w * PROGRESS_WINDOW_S <= t < load_start + (w + 1) * PROGRESS_WINDOW_S for t in c.finished
        )
    }
    assert not starved, f"clients with no call completed in a {PROGRESS_WINDOW_S:g} s window: {starved}"
    assert not not_serving, f"health flapped under load: {not_serving[:3]}"
    slow = {n: r["p99_ms"] for n, r in summary["rpcs"].items() if r["p99_ms"] > P99_CEILING_S * 1000}
    assert not slow, f"p99 above {P99_CEILING_S:g} s: {slow}"
    assert stack.pids() == pids and all(p.process.poll() is None for p in stack.services.processes.values())


# -- the Milvus server restarted under load -----------------------------------------------------------------

#: Once the restarted server answers reads again (a fresh client counts the rows of the stack's collections),
#: every caller succeeds within this many seconds. MEASURED: 24.6 s and 28.8 s in two runs, while a fresh
#: client's count query succeeded 0.3 s after the proxy answered. In one run the Milvus log declared the killed
#: query node down 23 s after the proxy answered, and every caller recovered ~1 s later, which points at the
#: server's session expiry (LocalMilvusServer.stop() SIGKILLs Milvus); the services' own reconnect path
#: (pymilvus reconnects under one lock, 10 s connect timeout) is not ruled out. KNOWN GAP, far from the 1 s the
#: Triton restart achieves: the bound catches a store that never recovers (a dead connection kept, or a channel
#: in gRPC's reconnect backoff of up to 120 s), not a slow one.
RECOVERY_BOUND_S = 45.0
#: How long the restarted server may take to answer. LocalMilvusServer.stop() ends Milvus 2.3.5 with SIGKILL
#: (the launcher exits on SIGTERM at once, and Milvus itself did not finish a SIGTERM shutdown within minutes),
#: so its etcd sessions outlive it and the restarted server may wait for their leases to expire.
RESTART_TIMEOUT_S = 300.0


def _reads_answer(uris: list[str]) -> bool:
    """Whether a fresh client counts the rows of every collection in these databases within 2 s each."""
    from pymilvus import MilvusClient

    try:
        for uri in uris:
            client = MilvusClient(uri=uri, timeout=2)
            try:
                for name in client.list_collections(timeout=2):
                    client.query(name, filter="", output_fields=["count(*)"], timeout=2)
            finally:
                client.close()
    except Exception:
        return False
    return True


def _bindable(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound the way the ``milvus-server`` launcher tries it (no
    SO_REUSEADDR). After a stop, the closed connections of the old server keep the port in TIME_WAIT for up
    to 60 s; a launcher started then silently moves the proxy to the next free port (19532 was seen) and
    LocalMilvusServer.start() waits for 19530 in vain."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: Deadline of the callers' calls: longer than the store's own 10 s timeout on a Milvus call, so what a
#: caller sees during the outage is the service's answer, not its own deadline.
CALLER_TIMEOUT_S = 15.0


@dataclass
class Caller:
    """Calls one RPC in a loop, recording (started, ended, outcome) until stopped."""

    name: str
    call: Callable[[], Awaitable[str]]
    outcomes: list[tuple[float, float, str]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                wrong = await self.call()
                outcome = f"WRONG {wrong}" if wrong else "OK"
            except grpc.aio.AioRpcError as exc:
                outcome = exc.code().name
            self.outcomes.append((started, time.perf_counter(), outcome))
            if outcome != "OK":
                await asyncio.sleep(0.05)  # no hot loop on an instant failure

    def first_ok_after(self, t: float) -> float | None:
        return next((end - t for _, end, outcome in self.outcomes if end >= t and outcome == "OK"), None)

    def failures_after(self, t: float) -> list[tuple[float, str]]:
        return [(round(end - t, 2), outcome) for _, end, outcome in self.outcomes if end >= t and outcome != "OK"]

    def started_after(self, t: float) -> list[tuple[float, str]]:
        return [(round(start - t, 2), outcome) for start, _, outcome in self.outcomes if start >= t]


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float) -> float:
    """Polls ``check`` until it holds; returns the seconds waited, fails naming ``what`` after ``timeout_s``."""
    started = time.perf_counter()
    while not await check():
        assert time.perf_counter() - started < timeout_s, f"{what}: not within {timeout_s:g} s"
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


async def _snapshot(stack: ServerStack, client: CouturierClient) -> dict[str, Any]:
    """What both stores hold and answer: row counts, ids, and the answers of a few searches."""
    counts = {
        key: (await getattr(client, key).GetIndexStats(catalogue_pb2.GetIndexStatsRequest(), timeout=30)).products
        for key in STORE_SERVICES
    }
    ids = {key: (await list_product_ids(getattr(client, key)))[0] for key in STORE_SERVICES}
    searched = []
    for row in range(4):
        reply = await client.retrieval.SearchByImage(
            retrieval_pb2.SearchByImageRequest(image=stack.pngs[row], k=5), timeout=30
        )
        searched.append([(h.product.product_id, round(h.score, 4)) for h in reply.hits])
    recommended = []
    for user in stack.users[:4]:
        reply = await client.scoring.Recommend(
            scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id=user), k=10), timeout=30
        )
        recommended.append([(p.product.product_id, round(p.score, 4)) for p in reply.products])
    return {"counts": counts, "ids": ids, "search": searched, "recommend": recommended}


async def test_milvus_server_restarted_under_load_callers_get_unavailable_then_recover_with_no_data_lost(
    stack: ServerStack, milvus_server: Any
) -> None:
    if milvus_server is None:
        pytest.skip("COUTURIER_TEST_MILVUS_URI names an external Milvus server: this test restarts only its own")
    if milvus_server.reused:
        pytest.skip(
            "the Milvus server on 127.0.0.1:19530 was already running when the session began (another run's, "
            "or started by hand): restarting it would break its other users; stop it to run this test"
        )
    started = time.perf_counter()
    pids = stack.pids()
    rpcs = _rpcs(stack)
    store_callers: list[Caller] = []
    async with stack.client() as client:
        before = await _snapshot(stack, client)
        assert before["counts"] == dict.fromkeys(STORE_SERVICES, len(stack.product_ids)), before["counts"]
        assert before["ids"] == dict.fromkeys(STORE_SERVICES, sorted(stack.product_ids))

        def bound(rpc: Rpc, i: int) -> Callable[[], Awaitable[str]]:
            return lambda: rpc(client, i, CALLER_TIMEOUT_S)

        store_callers += [Caller(f"{name}-{i}", bound(rpc, i)) for name, rpc in rpcs.items() for i in range(2)]
        audience = common_pb2.Audience(user=common_pb2.UserRef(user_id=stack.users[0]))

        async def score_upload() -> str:  # the item encoder and the user table only: no Milvus
            reply = await client.scoring.ScoreItems(
                scoring_pb2.ScoreItemsRequest(audience=audience, items=[common_pb2.ItemSource(image=stack.pngs[0])]),
                timeout=CALLER_TIMEOUT_S,
            )
            return "" if len(reply.scores) == 1 else f"{len(reply.scores)} scores for 1 item"

        control = Caller("ScoreItems-upload", score_upload)
        callers = [*store_callers, control]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(c.run(stop)) for c in callers]
        try:
            await _until(
                "every caller succeeds before the outage",
                lambda: _true(all(c.first_ok_after(started) is not None for c in callers)),
                60,
            )
            stopping = time.perf_counter()
            await asyncio.to_thread(milvus_server.stop)
            down = time.perf_counter()
            # health: the vector-keeping services say NOT_SERVING, latent (no Milvus) keeps SERVING
            during: dict[str, str] = {}

            async def store_services_not_serving() -> bool:
                during.update(await stack.health())
                return all(during[key] == "NOT_SERVING" for key in STORE_SERVICES)

            health_down_s = await _until("scoring and retrieval health NOT_SERVING", store_services_not_serving, 30)
            assert during["latent"] == "SERVING", during
            await _until(
                "every caller that needs Milvus sees the outage",
                lambda: _true(all(c.failures_after(down) for c in store_callers)),
                60,
            )
            port_free_s = await _until("port 19530 free to bind again", lambda: _true(_bindable(PORT)), 120)
            await asyncio.to_thread(milvus_server.start, RESTART_TIMEOUT_S)
            answered = time.perf_counter()  # the proxy answers (list_collections)
            # The server serves reads only once the query node of the killed server is declared down (its etcd
            # session lease runs out, ~20-25 s after the proxy answers): recovery is measured from then.
            uris = list(stack.serving.store_uri.values())
            searchable_s = await _until(
                "the restarted server answers reads", lambda: asyncio.to_thread(_reads_answer, uris), 180
            )
            ready = time.perf_counter()
            health_up_s = await _until(
                "every service SERVING again", lambda: _eq(stack.health(), dict.fromkeys(SERVICES, "SERVING")), 120
            )
            await _until(
                "every caller succeeds again",
                lambda: _true(all(c.first_ok_after(ready) is not None for c in callers)),
                120,
            )
            settled = ready + RECOVERY_BOUND_S
            await _until(
                "three calls of each caller started after the recovery bound",
                lambda: _true(all(len(c.started_after(settled)) >= 3 for c in callers)),
                60 + RECOVERY_BOUND_S,
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            if milvus_server.pid is None:  # failed mid-way: the later tests of the session need the server
                await _until("port 19530 free to bind again", lambda: _true(_bindable(PORT)), 120)
                await asyncio.to_thread(milvus_server.start, RESTART_TIMEOUT_S)
        after = await _snapshot(stack, client)

    recovery = {c.name: c.first_ok_after(ready) for c in callers}
    counted = Counter(o for c in callers for _, _, o in c.outcomes if o != "OK")
    codes = sorted(counted)
    print(
        f"\nMilvus stop {down - stopping:.1f} s, port free after {port_free_s:.1f} s, proxy answering {answered - down:.1f} s "
        f"after the stop, reads answered {searchable_s:.1f} s later; health NOT_SERVING "
        f"{health_down_s:.1f} s after the stop, all SERVING {health_up_s:.1f} s after reads answered; first success "
        "after reads answered: "
        + ", ".join(f"{n} {s:.2f} s" if s is not None else f"{n} never" for n, s in recovery.items())
        + f"; failures {dict(counted)}; health during the outage {during}; test {time.perf_counter() - started:.1f} s"
    )
    late = {c.name: [f for f in c.started_after(settled) if f[1] != "OK"] for c in callers}
    assert all(s is not None and s <= RECOVERY_BOUND_S for s in recovery.values()), recovery
    assert not any(late.values()), late
    assert health_up_s <= RECOVERY_BOUND_S, health_up_s
    # An outage is UNAVAILABLE, or the caller's own deadline while the store waits out its 10 s timeout (calls
    # queue behind the store's threads while Milvus hangs reads): never INTERNAL, UNKNOWN or a wrong answer.
    assert set(codes) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, codes
    assert not control.failures_after(started), control.failures_after(started)  # no Milvus needed, no failure
    assert stack.pids() == pids and all(p.process.poll() is None for p in stack.services.processes.values())
    assert after == before  # no rows lost or added, the same answers


async def _true(value: bool) -> bool:
    return value


async def _eq(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)
