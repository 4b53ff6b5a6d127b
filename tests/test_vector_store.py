"""The vector store against a real milvus-lite in tmp_path and a real Milvus server (no mocks).

The tests that take the ``store`` fixture run twice: on milvus-lite, and on the session's Milvus server
(``milvus_server_uri``: ``COUTURIER_TEST_MILVUS_URI`` when set, else a local standalone server started
from the dev extra's ``milvus`` package). Each server test uses its own database.

Also here: micro-batching of concurrent searches (:class:`SearchBatcher` over a fake call, then merged
searches on both stores), the server store's parallel calls, and the local stack in server mode.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

from couturier.services.common.errors import (
    DependencyUnavailable,
    InvalidInput,
    PreconditionFailed,
    map_exception,
)
from couturier.services.common.vectors import (
    MAX_EXCLUDED_IDS,
    MAX_TOPK,
    EmbeddingSpace,
    Hit,
    ProductVector,
    SearchBatcher,
    VectorStore,
    VersionMismatch,
    build_filter,
    check_query_version,
)
from support.trained import TrainedModels

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

DIM = 16
SPACE = EmbeddingSpace("item_encoder", "3", DIM)


def _items(n: int, *, dim: int = DIM, seed: int = 0, prefix: str = "p") -> list[ProductVector]:
    rng = np.random.default_rng(seed)
    vectors = (rng.normal(size=(n, dim)) * rng.uniform(0.2, 3.0, size=(n, 1))).astype(np.float32)
    return [
        ProductVector(f"{prefix}{i}", vectors[i], category=f"cat{i % 3}", colour=("red", "blue")[i % 2])
        for i in range(n)
    ]


def _exact_top(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def _recall(hits: list[list[Hit]], truth: np.ndarray, prefix: str = "p") -> float:
    found = [{int(h.product_id[len(prefix) :]) for h in row} for row in hits]
    return float(np.mean([len(f & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture
async def lite_store(tmp_path: Path):
    vector_store = VectorStore(str(tmp_path / "vectors" / "store.db"))
    yield vector_store
    await vector_store.close()


@pytest.fixture(params=["lite", "server"])
async def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "lite":
        vector_store = VectorStore(str(tmp_path / "vectors" / "store.db"))
        yield vector_store
        await vector_store.close()
        return
    from pymilvus import MilvusClient

    server_uri: str = request.getfixturevalue("milvus_server_uri")  # started only when a server test runs
    database = f"couturier_test_{uuid.uuid4().hex[:10]}"
    admin = MilvusClient(server_uri)
    admin.create_database(database)
    vector_store = VectorStore(f"{server_uri}/{database}")
    try:
        yield vector_store
    finally:
        await vector_store.close()
        scoped = MilvusClient(f"{server_uri}/{database}")  # use_database needs DescribeDatabase (server >= 2.4)
        for name in scoped.list_collections():
            scoped.drop_collection(name)
        scoped.close()
        admin.drop_database(database)
        admin.close()


@pytest.fixture
async def unbatched(store: VectorStore):
    """Another store on the same file / database as ``store``, without merging of searches."""
    other = VectorStore(store.uri, search_batch_max=1)
    yield other
    await other.close()


# --- spaces, versions, filters -------------------------------------------------------------------


def test_space_names_and_validation() -> None:
    assert SPACE.collection == "item_encoder_v3"
    assert EmbeddingSpace("retrieval_encoder", "12", 128, metric="COSINE").collection == "retrieval_encoder_v12"
    for bad in (
        dict(model="item-encoder", version="3", dim=8),
        dict(model="1model", version="3", dim=8),
        dict(model="m", version="3_1", dim=8),  # '_' would make the collection name ambiguous
        dict(model="m", version="", dim=8),
        dict(model="m", version="3", dim=0),
        dict(model="m", version="3", dim=8, metric="DOT"),
        dict(model="m", version="3", dim=8, index="HNSW"),
        dict(model="m", version="3", dim=8, index="IVF_FLAT", nlist=16, nprobe=32),
    ):
        with pytest.raises(InvalidInput):
            EmbeddingSpace(**bad)  # type: ignore[arg-type]


def test_version_mismatch_is_a_clear_precondition_error() -> None:
    check_query_version(SPACE, "item_encoder", "3")
    with pytest.raises(VersionMismatch) as caught:
        check_query_version(SPACE, "item_encoder", "4")
    message = str(caught.value)
    assert "item_encoder v4" in message and "item_encoder v3" in message
    assert "couturier index" in message and "pin the model version to 3" in message
    assert isinstance(caught.value, PreconditionFailed)
    assert map_exception(caught.value)[0].code is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(VersionMismatch):
        check_query_version(SPACE, "retrieval_encoder", "3")


def test_filter_expression_escapes_every_value() -> None:
    assert build_filter() == ""
    assert build_filter(categories=["tops"]) == 'category in ["tops"]'
    expr = build_filter(['a"b'], ["back\\slash"], ["x' or 1==1 or '", 'y" or product_id != "'])
    assert expr == (
        '(category in ["a\\"b"]) and (colour in ["back\\\\slash"]) and '
        '(product_id not in ["x\' or 1==1 or \'", "y\\" or product_id != \\""])'
    )
    with pytest.raises(InvalidInput):
        build_filter(categories=["line\nbreak"])
    with pytest.raises(InvalidInput):
        build_filter(exclude_ids=[""])
    with pytest.raises(InvalidInput):
        build_filter(categories="tops")  # type: ignore[arg-type]


def test_bad_uri_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="neither a milvus-lite file"):
        VectorStore("var/milvus/scoring")
    with pytest.raises(ValueError):
        VectorStore("")


# --- the store ------------------------------------------------------------------------------------


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_create_upsert_get_search_count_delete(store: VectorStore) -> None:
    assert await store.count(SPACE) == 0  # nothing indexed yet: no error, no collection created
    assert await store.versions("item_encoder") == []
    await store.ensure(SPACE)
    await store.ensure(SPACE)  # idempotent
    assert await store.versions("item_encoder") == ["3"]
    assert "1 collection" in await store.ping()

    items = _items(300)
    assert await store.upsert(SPACE, items) == 300
    assert await store.count(SPACE) == 300
    assert await store.per_category(SPACE) == {"cat0": 100, "cat1": 100, "cat2": 100}

    got = await store.get(SPACE, ["p7", "missing", "p3", "p7"])
    assert list(got) == ["p7", "p3"]
    np.testing.assert_array_equal(got["p7"].vector, items[7].vector)
    assert (got["p7"].category, got["p7"].colour) == ("cat1", "blue")

    vectors = np.stack([item.vector for item in items])
    queries = np.random.default_rng(5).normal(size=(4, DIM)).astype(np.float32)
    hits = await store.search(SPACE, queries, 10)
    truth = _exact_top(queries, vectors, 10)
    for row, expected, query in zip(hits, truth, queries, strict=True):
        assert [h.product_id for h in row] == [f"p{i}" for i in expected]
        scores = np.array([h.score for h in row])
        np.testing.assert_allclose(scores, vectors[expected] @ query, rtol=1e-4, atol=1e-4)  # IP, higher first
        assert all(h.category == items[int(h.product_id[1:])].category for h in row)

    assert await store.delete(SPACE, ["p1", "p2", "nope", "p1"]) == (2, ["nope"])
    assert await store.count(SPACE) == 298
    assert await store.get(SPACE, ["p1", "p2"]) == {}
    after = await store.search(SPACE, vectors[1:2], 300)
    assert "p1" not in {h.product_id for h in after[0]} and len(after[0]) == 298

    await store.drop(SPACE)
    assert await store.count(SPACE) == 0
    assert await store.versions("item_encoder") == []


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_collections_hold_vectors_and_filter_fields_only(store: VectorStore) -> None:
    """No images in Milvus (they live in the product image store), and every VARCHAR fits a real server's
    limit (max_length <= 65535)."""
    await store.upsert(SPACE, _items(3))

    def schema() -> dict[str, dict]:
        return {f["name"]: f for f in store._connect().describe_collection(SPACE.collection)["fields"]}

    fields = await store._run(None, schema)
    assert set(fields) == {"product_id", "vector", "category", "colour", "model", "model_version"}
    lengths = [int(f["params"]["max_length"]) for f in fields.values() if "max_length" in f.get("params", {})]
    assert len(lengths) == 5 and max(lengths) <= 65_535
    assert not hasattr(ProductVector("p", np.zeros(DIM)), "thumbnail")


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_collections_created_with_a_thumbnail_field_still_take_writes(lite_store: VectorStore) -> None:
    """Collections of earlier versions kept a base64 thumbnail VARCHAR: writes fill it with "" (images now live
    in the product image store), reads and searches ignore it."""
    from pymilvus import DataType, MilvusClient

    def create_legacy() -> None:
        client = lite_store._connect()
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        for name in ("category", "colour", "model", "model_version"):
            schema.add_field(name, DataType.VARCHAR, max_length=128)
        schema.add_field("thumbnail", DataType.VARCHAR, max_length=65_536)
        index = client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="IP")
        client.create_collection(SPACE.collection, schema=schema, index_params=index)

    await lite_store._run(None, create_legacy)
    items = _items(20, seed=12)
    assert await lite_store.upsert(SPACE, items) == 20
    assert await lite_store.count(SPACE) == 20
    got = await lite_store.get(SPACE, ["p4"])
    np.testing.assert_array_equal(got["p4"].vector, items[4].vector)
    assert (await lite_store.search(SPACE, items[4].vector * 10, 1))[0][0].product_id == "p4"


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_reupsert_same_ids_replaces_rows(store: VectorStore) -> None:
    first = _items(200, seed=1)
    await store.upsert(SPACE, first)
    await store.search(SPACE, first[0].vector, 1)  # flushes: the second upsert replaces flushed rows
    second = [ProductVector(i.product_id, -i.vector, category="new", colour="green") for i in first]
    await store.upsert(SPACE, second)
    await store.upsert(SPACE, second)  # idempotent
    assert await store.count(SPACE) == 200
    assert await store.per_category(SPACE) == {"new": 200}
    got = await store.get(SPACE, ["p0", "p199"])
    np.testing.assert_array_equal(got["p0"].vector, -first[0].vector)
    assert got["p199"].colour == "green"
    top = (await store.search(SPACE, -first[5].vector, 200))[0]
    assert len(top) == 200 and len({h.product_id for h in top}) == 200  # no stale duplicates
    expected = _exact_top(-first[5].vector[None, :], np.stack([i.vector for i in second]), 1)[0, 0]
    assert top[0].product_id == f"p{expected}" and top[0].colour == "green"


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_search_filters_by_category_colour_and_exclusions(store: VectorStore) -> None:
    items = _items(120, seed=2)
    odd = ProductVector("quote\"and\\back'slash é", items[0].vector * 10, category='odd "cat"', colour="red")
    await store.upsert(SPACE, [*items, odd])
    query = items[0].vector

    rows = (await store.search(SPACE, query, 50, categories=["cat1"], colours=["red"]))[0]
    assert rows and all(h.category == "cat1" and h.colour == "red" for h in rows)
    assert len(rows) == sum(1 for i in items if i.category == "cat1" and i.colour == "red")

    rows = (await store.search(SPACE, query, 200, categories=["cat0", "cat2"]))[0]
    assert {h.category for h in rows} == {"cat0", "cat2"}

    top = (await store.search(SPACE, query, 3))[0]
    assert top[0].product_id == odd.product_id  # ids with quotes and backslashes are stored and found
    excluded = [odd.product_id, top[1].product_id]
    rows = (await store.search(SPACE, query, 3, exclude_ids=excluded))[0]
    assert rows[0].product_id == top[2].product_id and not set(excluded) & {h.product_id for h in rows}

    rows = (await store.search(SPACE, query, 5, categories=['odd "cat"']))[0]
    assert [h.product_id for h in rows] == [odd.product_id]
    assert (await store.search(SPACE, query, 5, categories=["no such category"]))[0] == []
    assert list(await store.get(SPACE, [odd.product_id])) == [odd.product_id]
    assert await store.delete(SPACE, [odd.product_id]) == (1, [])


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_invalid_vectors_are_rejected_and_nothing_changes(store: VectorStore) -> None:
    items = _items(20, seed=3)
    await store.upsert(SPACE, items)
    good = ProductVector("p0", np.ones(DIM, np.float32))
    nan = np.ones(DIM, np.float32)
    nan[3] = np.nan
    inf = np.ones(DIM, np.float32)
    inf[0] = np.inf
    overflow = np.ones(DIM, np.float64)
    overflow[0] = 1e39  # finite in float64, inf once stored as float32

    cases = {
        "NaN": [good, ProductVector("p1", nan)],
        "infinite": [good, ProductVector("p1", inf)],
        "overflow": [good, ProductVector("p1", overflow)],
        "dimension": [good, ProductVector("p1", np.ones(DIM + 1, np.float32))],
        "matrix": [good, ProductVector("p1", np.ones((1, DIM), np.float32))],
        "duplicate": [good, ProductVector("p0", np.ones(DIM, np.float32))],
        "empty id": [good, ProductVector("", np.ones(DIM, np.float32))],
        "control": [good, ProductVector("p\n1", np.ones(DIM, np.float32))],
        "long id": [good, ProductVector("x" * 513, np.ones(DIM, np.float32))],
        "long label": [good, ProductVector("p1", np.ones(DIM, np.float32), category="c" * 129)],
    }
    for name, batch in cases.items():
        with pytest.raises(InvalidInput) as caught:
            await store.upsert(SPACE, batch)
        if name in ("NaN", "infinite", "overflow", "dimension", "duplicate"):
            assert "p1" in str(caught.value) or "p0" in str(caught.value), name
    with pytest.raises(InvalidInput, match="'p1'.*NaN or infinite"):
        await store.upsert(SPACE, cases["NaN"])

    assert await store.count(SPACE) == 20
    stored = await store.get(SPACE, ["p0", "p1"])
    np.testing.assert_array_equal(stored["p0"].vector, items[0].vector)
    np.testing.assert_array_equal(stored["p1"].vector, items[1].vector)
    assert await store.upsert(SPACE, []) == 0


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_search_limits_and_query_validation(store: VectorStore) -> None:
    await store.upsert(SPACE, _items(30, seed=4))
    query = np.ones(DIM, np.float32)
    for k in (0, -1, MAX_TOPK + 1, 2.5, True):
        with pytest.raises(InvalidInput, match="k must be"):
            await store.search(SPACE, query, k)  # type: ignore[arg-type]
    assert len((await store.search(SPACE, query, MAX_TOPK))[0]) == 30  # fewer hits than k when fewer products
    # Exclusions go into the filter, not into top-k: k plus many exclusions may pass the top-k limit.
    many = [f"x{i}" for i in range(20_000)] + ["p0", "p1"]
    assert len((await store.search(SPACE, query, MAX_TOPK, exclude_ids=many))[0]) == 28
    with pytest.raises(InvalidInput, match="at most 65536"):
        await store.search(SPACE, query, 5, exclude_ids=[f"x{i}" for i in range(MAX_EXCLUDED_IDS + 1)])
    with pytest.raises(InvalidInput, match="shape"):
        await store.search(SPACE, np.ones((2, DIM + 1), np.float32), 5)
    bad = np.ones((3, DIM), np.float32)
    bad[2, 0] = np.nan
    with pytest.raises(InvalidInput, match="query vector 2"):
        await store.search(SPACE, bad, 5)
    assert len(await store.search(SPACE, np.ones((3, DIM), np.float32), 5)) == 3


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_unknown_collection_and_schema_conflicts(store: VectorStore) -> None:
    missing = EmbeddingSpace("item_encoder", "9", DIM)
    with pytest.raises(PreconditionFailed, match=r"no vectors are indexed for item_encoder v9.*couturier index"):
        await store.search(missing, np.ones(DIM, np.float32), 5)
    with pytest.raises(PreconditionFailed):
        await store.get(missing, ["p0"])
    assert await store.per_category(missing) == {}

    with pytest.raises(PreconditionFailed, match="item_encoder v9"):
        await store.dim("item_encoder", "9")
    await store.upsert(SPACE, _items(5))
    assert await store.dim("item_encoder", "3") == DIM
    with pytest.raises(PreconditionFailed, match="holds 16-d vectors"):
        await store.ensure(EmbeddingSpace("item_encoder", "3", DIM * 2))
    with pytest.raises(PreconditionFailed, match="metric IP"):
        await store.ensure(EmbeddingSpace("item_encoder", "3", DIM, metric="COSINE"))
    with pytest.raises(PreconditionFailed):
        await store.search(EmbeddingSpace("item_encoder", "3", DIM, metric="L2"), np.ones(DIM, np.float32), 5)

    # Dropped behind the store's back (another client): the next search says so instead of failing oddly.
    other = VectorStore(store.uri)
    await other.drop(SPACE)
    await other.close()
    with pytest.raises(PreconditionFailed, match="couturier index"):
        await store.search(SPACE, np.ones(DIM, np.float32), 5)


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_cosine_and_l2_scores_are_similarities(store: VectorStore) -> None:
    items = _items(40, seed=6)
    vectors = np.stack([i.vector for i in items])
    query = np.random.default_rng(7).normal(size=DIM).astype(np.float32)
    cosine = EmbeddingSpace("retrieval_encoder", "1", DIM, metric="COSINE")
    l2 = EmbeddingSpace("retrieval_encoder", "2", DIM, metric="L2")
    await store.upsert(cosine, items)
    await store.upsert(l2, items)
    assert await store.versions("retrieval_encoder") == ["1", "2"]

    expected = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    rows = (await store.search(cosine, query, 5))[0]
    order = np.argsort(-expected)[:5]
    assert [h.product_id for h in rows] == [f"p{i}" for i in order]
    np.testing.assert_allclose([h.score for h in rows], expected[order], rtol=1e-4, atol=1e-5)

    squared = ((vectors - query) ** 2).sum(axis=1)
    rows = (await store.search(l2, query, 5))[0]
    order = np.argsort(squared)[:5]
    assert [h.product_id for h in rows] == [f"p{i}" for i in order]
    np.testing.assert_allclose([h.score for h in rows], -squared[order], rtol=1e-4)  # FLAT L2: -squared distance


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_recall_flat_and_ivf_against_exact_inner_products(tmp_path: Path) -> None:
    """FLAT is exact on ~5k unnormalised vectors. IVF_FLAT (nlist 128) is measured after a reopen: milvus-lite
    builds IVF indexes for newly flushed rows in the background and searches them exactly until then,
    while loading builds them at once."""
    n, dim, k = 5000, 32, 10
    rng = np.random.default_rng(11)
    random_vectors = (rng.normal(size=(n, dim)) * rng.uniform(0.2, 3.0, size=(n, 1))).astype(np.float32)
    centres = rng.normal(size=(60, dim))  # clustered like real embeddings: categories x styles
    labels = rng.integers(0, 60, size=n)
    clustered = ((centres[labels] + 0.6 * rng.normal(size=(n, dim))) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(
        np.float32
    )
    random_queries = rng.normal(size=(50, dim)).astype(np.float32)
    clustered_queries = (centres[rng.integers(0, 60, size=50)] + 0.6 * rng.normal(size=(50, dim))).astype(np.float32)

    flat = EmbeddingSpace("flat", "1", dim)
    ivf_random = EmbeddingSpace("ivfr", "1", dim, index="IVF_FLAT")
    ivf_clustered = EmbeddingSpace("ivfc", "1", dim, index="IVF_FLAT")
    uri = str(tmp_path / "recall.db")
    store = VectorStore(uri)
    for space, vectors in ((flat, random_vectors), (ivf_random, random_vectors), (ivf_clustered, clustered)):
        await store.upsert(space, [ProductVector(f"p{i}", v) for i, v in enumerate(vectors)])
    started = time.perf_counter()
    hits = await store.search(flat, random_queries, k)  # flushes 5k rows first
    assert _recall(hits, _exact_top(random_queries, random_vectors, k)) == 1.0
    flush_and_search_s = time.perf_counter() - started
    await store.count(ivf_random)
    await store.count(ivf_clustered)
    await store.close()

    store = VectorStore(uri)  # reopen: collections come back unloaded; attaching loads and builds IVF
    try:
        hits = await store.search(flat, random_queries, k)
        assert _recall(hits, _exact_top(random_queries, random_vectors, k)) == 1.0
        # Default nprobe 32 of 128 on clustered vectors (what trained encoders produce): recall@10 >= 0.95.
        hits = await store.search(ivf_clustered, clustered_queries, k)
        assert _recall(hits, _exact_top(clustered_queries, clustered, k)) >= 0.95
        # Unstructured random vectors are IVF's worst case: recall grows with nprobe, exact at nprobe = nlist.
        truth = _exact_top(random_queries, random_vectors, k)
        recalls = {}
        for nprobe in (1, 32, 128):
            space = EmbeddingSpace("ivfr", "1", dim, index="IVF_FLAT", nprobe=nprobe)
            recalls[nprobe] = _recall(await store.search(space, random_queries, k), truth)
        assert recalls[1] < 0.5 < recalls[32] < recalls[128] == 1.0, recalls  # nprobe=1 low: the IVF index is used
    finally:
        await store.close()
    assert flush_and_search_s < 20


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_concurrent_upserts_lose_no_rows(store: VectorStore) -> None:
    rng = np.random.default_rng(8)

    async def writer(task: int) -> int:
        vectors = rng.normal(size=(500, DIM)).astype(np.float32)
        items = [ProductVector(f"t{task}-{i}", vectors[i], category=f"c{task % 4}") for i in range(500)]
        written = 0
        for start in range(0, 500, 100):  # interleave many small writes across tasks
            written += await store.upsert(SPACE, items[start : start + 100])
        return written

    await store.ensure(SPACE)
    written = await asyncio.gather(*(writer(t) for t in range(20)), store.count(SPACE), store.per_category(SPACE))
    assert sum(written[:20]) == 10_000
    assert await store.count(SPACE) == 10_000
    assert await store.per_category(SPACE) == {f"c{i}": 2500 for i in range(4)}
    deleted = await asyncio.gather(*(store.delete(SPACE, [f"t{t}-{i}" for i in range(10)]) for t in range(20)))
    assert sum(d for d, _ in deleted) == 200 and await store.count(SPACE) == 9_800


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_reopen_after_close_keeps_data_and_releases_the_file(tmp_path: Path) -> None:
    uri = str(tmp_path / "reopen.db")
    items = _items(100, seed=9)
    first = VectorStore(uri)
    second = VectorStore(uri)  # same process, same file: shares milvus-lite's in-process server
    await first.upsert(SPACE, items[:50])
    await second.upsert(SPACE, items[50:])
    assert await first.count(SPACE) == 100 == await second.count(SPACE)
    await first.close()
    await first.close()  # idempotent
    with pytest.raises(DependencyUnavailable, match="closed"):
        await first.count(SPACE)
    assert await second.count(SPACE) == 100  # the file stays open while another store uses it
    await second.upsert(SPACE, [ProductVector("late", items[0].vector)])  # unflushed when closed
    await second.close()

    # The file is released: another process can open it and sees every row.
    probe = _run_in_subprocess(uri, "print(await store.count(SPACE)); print(await store.ping())")
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.splitlines()[0] == "101"

    reopened = VectorStore(uri)
    try:
        assert await reopened.count(SPACE) == 101
        hits = await reopened.search(SPACE, items[3].vector, 1, exclude_ids=["late"])  # loads the collection first
        expected = _exact_top(items[3].vector[None, :], np.stack([i.vector for i in items]), 1)[0, 0]
        assert hits[0][0].product_id == f"p{expected}"
        np.testing.assert_array_equal((await reopened.get(SPACE, ["p42"]))["p42"].vector, items[42].vector)
    finally:
        await reopened.close()


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_second_process_on_the_same_file_is_told_what_to_do(lite_store: VectorStore) -> None:
    await lite_store.upsert(SPACE, _items(3))
    probe = _run_in_subprocess(lite_store.uri, "await store.ping()")
    assert probe.returncode == 3, probe.stdout + probe.stderr[-2000:]
    assert "locked by another process" in probe.stdout
    assert "its own file" in probe.stdout and "Milvus server" in probe.stdout
    assert await lite_store.count(SPACE) == 3  # the holder is unaffected


async def test_unreachable_server_is_dependency_unavailable() -> None:
    store = VectorStore("http://127.0.0.1:9", timeout_s=2)
    try:
        started = time.perf_counter()
        with pytest.raises(DependencyUnavailable, match="cannot reach the Milvus server at http://127.0.0.1:9") as err:
            await store.ping()
        assert map_exception(err.value)[0].code is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(DependencyUnavailable):
            await store.search(SPACE, np.ones(DIM, np.float32), 3)
        assert time.perf_counter() - started < 10
    finally:
        await store.close()


def _run_in_subprocess(uri: str, body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` against a VectorStore on ``uri`` in another Python process.

    Exit code 3 with the message on stdout means DependencyUnavailable was raised."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from couturier.services.common.errors import DependencyUnavailable
        from couturier.services.common.vectors import EmbeddingSpace, VectorStore

        SPACE = EmbeddingSpace("item_encoder", "3", {DIM})

        async def main():
            store = VectorStore({uri!r}, timeout_s=5)
            try:
        {textwrap.indent(body, " " * 8)}
            except DependencyUnavailable as exc:
                print(exc)
                sys.exit(3)
            finally:
                await store.close()

        asyncio.run(main())
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)


# --- micro-batching of searches (no Milvus) ---------------------------------------------------------


class _FakeCalls:
    """A search call that answers each query row with one hit naming the row's first value, recording
    every call (key, rows, limit) and how many run at once."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[tuple[str, int, int]] = []
        self.running = 0
        self.most_running = 0

    async def __call__(self, key: str, matrix: np.ndarray, limit: int) -> list[list[Hit]]:
        self.calls.append((key, int(matrix.shape[0]), limit))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail:
                raise DependencyUnavailable("the store went away")
            return [[Hit(f"{key}:{int(row[0])}", float(limit), "", "")] for row in matrix]
        finally:
            self.running -= 1


def _row(value: int) -> np.ndarray:
    return np.full((1, 4), value, np.float32)


async def test_batcher_merges_concurrent_searches_and_each_caller_gets_its_own_hits() -> None:
    fake = _FakeCalls()
    batcher: SearchBatcher[str] = SearchBatcher(fake, max_queries=64, max_wait_s=0.0, max_in_flight=1)
    hits = await asyncio.gather(*(batcher.search("a", _row(i), 10) for i in range(64)))
    assert [h[0][0].product_id for h in hits] == [f"a:{i}" for i in range(64)]
    assert fake.calls == [("a", 64, 10)]  # same tick: one call of 64 queries
    assert (batcher.stats.searches, batcher.stats.calls, batcher.stats.largest_call) == (64, 1, 64)

    lone = await batcher.search("a", _row(7), 3)  # alone: sent at once, on its own
    assert lone[0][0].product_id == "a:7" and fake.calls[-1] == ("a", 1, 3)
    assert batcher._queues == {}  # nothing left behind


async def test_batcher_never_merges_different_keys_and_asks_for_the_largest_limit() -> None:
    fake = _FakeCalls()
    batcher: SearchBatcher[str] = SearchBatcher(fake, max_queries=64, max_wait_s=0.0, max_in_flight=1)
    keys = ["red", "blue", "red", "green"] * 10
    limits = [5, 12, 9, 3] * 10
    hits = await asyncio.gather(*(batcher.search(k, _row(i), n) for i, (k, n) in enumerate(zip(keys, limits))))
    assert [h[0][0].product_id for h in hits] == [f"{k}:{i}" for i, k in enumerate(keys)]
    assert sorted(fake.calls) == [("blue", 10, 12), ("green", 10, 3), ("red", 20, 9)]


async def test_batcher_bounds_rows_per_call_and_merges_while_calls_are_busy() -> None:
    fake = _FakeCalls(delay_s=0.05)
    batcher: SearchBatcher[str] = SearchBatcher(fake, max_queries=16, max_wait_s=0.0, max_in_flight=1)
    first = asyncio.ensure_future(batcher.search("k", _row(0), 1))
    await asyncio.sleep(0.01)  # the first call is running: the next ones queue behind it
    rest = [asyncio.ensure_future(batcher.search("k", np.full((3, 4), i, np.float32), 1)) for i in range(1, 11)]
    results = await asyncio.gather(first, *rest)
    assert [len(r) for r in results] == [1] + [3] * 10
    assert all(r[0].product_id == f"k:{i}" for i, res in enumerate(results) for r in res)
    rows = [n for _, n, _ in fake.calls]
    assert rows == [1, 15, 15]  # the first alone; the 30 queued rows in calls of at most 16 (whole searches)
    assert fake.most_running == 1
    big = await batcher.search("k", np.zeros((40, 4), np.float32), 1)  # larger than a call: sent alone
    assert len(big) == 40 and fake.calls[-1][1] == 40


async def test_batcher_wait_is_bounded_and_a_full_call_does_not_wait() -> None:
    fake = _FakeCalls()
    batcher: SearchBatcher[str] = SearchBatcher(fake, max_queries=8, max_wait_s=0.2, max_in_flight=2)
    started = time.perf_counter()
    await batcher.search("k", _row(1), 1)
    assert 0.15 <= time.perf_counter() - started < 2.0  # a lone search waited for company, then went
    started = time.perf_counter()
    await asyncio.gather(*(batcher.search("k", _row(i), 1) for i in range(8)))
    assert time.perf_counter() - started < 0.15 and fake.calls[-1][1] == 8  # full: sent at once


async def test_batcher_failures_reach_every_caller_of_the_call_and_cancelled_callers_are_skipped() -> None:
    fake = _FakeCalls(delay_s=0.02, fail=True)
    batcher: SearchBatcher[str] = SearchBatcher(fake, max_queries=64, max_wait_s=0.0, max_in_flight=1)
    results = await asyncio.gather(*(batcher.search("k", _row(i), 1) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, DependencyUnavailable) for r in results) and len(fake.calls) == 1
    fake.fail = False
    busy = asyncio.ensure_future(batcher.search("k", _row(0), 1))
    await asyncio.sleep(0.005)
    doomed = asyncio.ensure_future(batcher.search("k", _row(1), 1))
    kept = asyncio.ensure_future(batcher.search("k", _row(2), 1))
    await asyncio.sleep(0)
    doomed.cancel()
    assert (await busy)[0][0].product_id == "k:0" and (await kept)[0][0].product_id == "k:2"
    assert doomed.cancelled() and fake.calls[-1][1] == 1  # the cancelled search was not sent


async def test_batcher_off_sends_every_search_alone() -> None:
    fake = _FakeCalls()
    batcher: SearchBatcher[str] = SearchBatcher(fake, max_queries=1, max_wait_s=0.001, max_in_flight=4)
    await asyncio.gather(*(batcher.search("k", _row(i), 1) for i in range(10)))
    assert len(fake.calls) == 10 and not batcher.enabled


def test_store_refuses_bad_concurrency_settings() -> None:
    for bad in (dict(threads=0), dict(search_batch_max=0), dict(search_batch_max=5000), dict(search_batch_wait_s=-1)):
        with pytest.raises(ValueError):
            VectorStore("http://127.0.0.1:19530", **bad)  # type: ignore[arg-type]
    assert VectorStore("x.db", threads=8).threads == 1  # a milvus-lite file: always one thread


# --- merged searches and parallel calls on real stores ---------------------------------------------


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_concurrent_searches_are_merged_and_match_unmerged_searches(
    store: VectorStore, unbatched: VectorStore
) -> None:
    """64 concurrent searches with different filters, exclusions and k: fewer Milvus calls than searches,
    and every caller gets exactly what it gets alone (filters are never mixed up)."""
    items = _items(600, seed=21)
    await store.upsert(SPACE, items)
    rng = np.random.default_rng(22)
    queries = rng.normal(size=(64, DIM)).astype(np.float32)
    categories = [[], ["cat0"], ["cat1", "cat2"], []]
    asks = [
        dict(k=(5, 10, 20)[i % 3], categories=categories[i % 4], exclude_ids=[f"p{j}" for j in range(i % 5 * 7)])
        for i in range(64)
    ]
    before = store.search_stats.calls
    merged = await asyncio.gather(*(store.search(SPACE, queries[i], **ask) for i, ask in enumerate(asks)))
    calls = store.search_stats.calls - before
    assert calls < 16, calls  # 64 searches in at most a handful of calls
    for i, ask in enumerate(asks):
        alone = await unbatched.search(SPACE, queries[i], **ask)
        assert [h.product_id for h in merged[i][0]] == [h.product_id for h in alone[0]], (i, ask)
        assert len(merged[i][0]) == ask["k"]
        assert all(not ask["categories"] or h.category in ask["categories"] for h in merged[i][0])
        assert not set(ask["exclude_ids"]) & {h.product_id for h in merged[i][0]}
    assert unbatched.search_stats.calls == unbatched.search_stats.searches == 64


async def _slow_search_intervals(vector_store: VectorStore, n: int, delay_s: float) -> list[tuple[float, float, int]]:
    """Run ``n`` concurrent searches whose Milvus call takes at least ``delay_s``; returns each call's
    (start, end, thread id)."""
    intervals: list[tuple[float, float, int]] = []
    client = await vector_store._call(vector_store._connect)
    real = client.search

    def slow(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        time.sleep(delay_s)
        result = real(*args, **kwargs)
        intervals.append((start, time.perf_counter(), threading.get_ident()))
        return result

    client.search = slow  # type: ignore[method-assign]
    try:
        queries = np.random.default_rng(23).normal(size=(n, DIM)).astype(np.float32)
        await asyncio.gather(*(vector_store.search(SPACE, q, 3) for q in queries))
    finally:
        client.search = real  # type: ignore[method-assign]
    return intervals


def _most_at_once(intervals: list[tuple[float, float, int]]) -> int:
    events = sorted([(s, 1) for s, _, _ in intervals] + [(e, -1) for _, e, _ in intervals])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_server_calls_run_in_parallel_and_lite_calls_on_one_thread(unbatched: VectorStore) -> None:
    await unbatched.upsert(SPACE, _items(50, seed=24))
    intervals = await _slow_search_intervals(unbatched, 8, 0.2)
    assert len(intervals) == 8
    if unbatched.lite:
        assert _most_at_once(intervals) == 1 and len({t for _, _, t in intervals}) == 1
    else:
        assert unbatched.threads == 8
        assert _most_at_once(intervals) >= 4, intervals  # overlapping calls on several threads
        assert len({t for _, _, t in intervals}) >= 4


@pytest.mark.integration  # a real Milvus (lite, and a server)
async def test_concurrent_upserts_and_deletes_lose_nothing(store: VectorStore) -> None:
    """Writers that upsert and delete at the same time (parallel threads on a server, one thread on lite):
    every surviving row is there, every deleted one is gone."""
    await store.ensure(SPACE)

    async def writer(task: int) -> None:
        items = _items(300, seed=100 + task, prefix=f"w{task}-")
        for start in range(0, 300, 100):
            await store.upsert(SPACE, items[start : start + 100])
            await store.delete(SPACE, [items[i].product_id for i in range(start, start + 30)])

    await asyncio.gather(*(writer(t) for t in range(16)))
    assert await store.count(SPACE) == 16 * 210
    gone = await store.get(SPACE, [f"w{t}-{i}" for t in range(16) for i in range(0, 30)])
    kept = await store.get(SPACE, [f"w{t}-{i}" for t in range(16) for i in range(30, 100)])
    assert gone == {} and len(kept) == 16 * 70
    assert sum((await store.per_category(SPACE)).values()) == 16 * 210


# --- the local Milvus server and the stack in server mode -------------------------------------------


@pytest.mark.integration  # a real Milvus server
def test_local_server_is_reused_and_the_stack_gets_databases_of_its_own(milvus_server_uri: str, tmp_path: Path) -> None:
    from couturier.export.tools.milvus_server import PORT, LocalMilvusServer, _answers, list_databases
    from couturier.export.tools.stack import ServingStack

    if milvus_server_uri != f"http://127.0.0.1:{PORT}":
        pytest.skip("COUTURIER_TEST_MILVUS_URI names another server")
    second = LocalMilvusServer(tmp_path / "unused")
    assert second.start() == milvus_server_uri and second.reused and second.pid is None
    second.stop()  # a reused server keeps running
    assert _answers(milvus_server_uri) and not (tmp_path / "unused").exists()

    stack = ServingStack(tmp_path / "repo", tmp_path / "users", tmp_path / "work", store="server")
    uris = stack.start_store()
    assert set(uris) == {"scoring", "retrieval"} and uris["scoring"] != uris["retrieval"]
    databases = {uri.rsplit("/", 1)[1] for uri in uris.values()}
    assert all(uri.startswith(milvus_server_uri + "/couturier_stack_") for uri in uris.values())
    assert databases <= set(list_databases(milvus_server_uri))
    env = stack.service_env("127.0.0.1:1")
    assert env["COUTURIER_SCORING_MILVUS_URI"] == uris["scoring"]
    assert env["COUTURIER_RETRIEVAL_MILVUS_URI"] == uris["retrieval"]
    stack.stop()
    assert not databases & set(list_databases(milvus_server_uri)) and _answers(milvus_server_uri)

    lite = ServingStack(tmp_path / "repo", tmp_path / "users", tmp_path / "work")
    assert lite.store_uri == {k: str(tmp_path / "work" / "milvus" / f"{k}.db") for k in ("scoring", "retrieval")}
    with pytest.raises(ValueError, match="names a database"):
        ServingStack(tmp_path, tmp_path, tmp_path, store="server", milvus_uri=f"{milvus_server_uri}/db")


@pytest.mark.slow
@pytest.mark.integration  # trained models, a local Triton, a real Milvus server
@pytest.mark.timeout(900)
async def test_stack_in_server_mode_indexes_and_searches_in_scoring_and_retrieval(
    trained_models: TrainedModels, milvus_server_uri: str, tmp_path: Path
) -> None:
    """ServingStack(store="server"): both services keep their vectors on the Milvus server (no VARCHAR above
    the server's 65,535 limit), IndexCatalogue, Recommend and SearchByImage work there, and concurrent
    searches of several shoppers come back right (merged calls, per-shopper exclusions)."""
    from pymilvus import MilvusClient

    from couturier.export.data.dataset import load_prepared
    from couturier.export.tools.indexing import index_catalogue
    from couturier.export.tools.milvus_server import PORT, list_databases
    from couturier.export.tools.stack import ServingStack
    from couturier.services.client import CouturierClient
    from couturier.services.common.images import encode_png
    from couturier.v1 import catalogue_pb2, common_pb2, retrieval_pb2, scoring_pb2

    local = milvus_server_uri == f"http://127.0.0.1:{PORT}"
    serving = ServingStack(
        repo_dir=trained_models.repo_dir,
        user_vectors_dir=trained_models.user_vectors_dir,
        work_dir=tmp_path / "stack",
        triton_home=Path("var/triton").absolute(),
        store="server",
        milvus_uri="" if local else milvus_server_uri,  # the local one: the stack finds it running and reuses it
    )
    prepared = load_prepared(trained_models.data_dir)
    catalogue = prepared.catalogue
    ids = [str(i) for i in catalogue.product_ids]
    users = [str(u) for u in prepared.interactions.user_ids]
    try:
        await serving.start(timeout_s=180)
        uris = serving.store_uri
        assert all(uri.startswith(milvus_server_uri + "/couturier_stack_") for uri in uris.values())
        assert serving.milvus is None or serving.milvus.reused
        targets = {key: serving.target(key) for key in ("orchestrator", "scoring", "latent", "retrieval")}
        async with CouturierClient(*targets.values()) as client:
            response = await index_catalogue(client, catalogue, progress=False)
            assert response.scoring.total == response.retrieval.total == len(ids)
            for stats in (
                await client.scoring.GetIndexStats(catalogue_pb2.GetIndexStatsRequest()),
                await client.retrieval.GetIndexStats(catalogue_pb2.GetIndexStatsRequest()),
            ):
                assert stats.products == len(ids)

            recommended = await asyncio.gather(
                *(
                    client.scoring.Recommend(
                        scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id=users[row]), k=10)
                    )
                    for row in range(16)
                )
            )
            for row, got in enumerate(recommended):
                bought = {ids[i] for i in prepared.interactions.train[row]}
                found = [p.product.product_id for p in got.products]
                assert len(found) == 10 and not bought & set(found), row
                alone = await client.scoring.Recommend(
                    scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id=users[row]), k=10)
                )
                assert [p.product.product_id for p in alone.products] == found

            searched = await asyncio.gather(
                *(
                    client.retrieval.SearchByImage(
                        retrieval_pb2.SearchByImageRequest(
                            image=common_pb2.ImagePayload(
                                data=encode_png(catalogue.images[row]), mime_type="image/png"
                            ),
                            k=5,
                        )
                    )
                    for row in range(8)
                )
            )
            for row, got in enumerate(searched):
                assert ids[row] in [p.product.product_id for p in got.hits], row  # a product's own image finds it

        for key, model in (("scoring", "item_encoder"), ("retrieval", "retrieval_encoder")):
            scoped = MilvusClient(uris[key])
            try:
                assert [c for c in scoped.list_collections() if c.startswith(f"{model}_v")], key
            finally:
                scoped.close()
    except BaseException:
        if serving.services is not None:
            for key in serving.services.processes:
                print(f"--- {key} log ---\n{serving.services.log_tail(key)}")
        raise
    finally:
        serving.stop()
    databases = {uri.rsplit("/", 1)[1] for uri in uris.values()}
    assert not databases & set(list_databases(milvus_server_uri))  # the stack dropped its databases
