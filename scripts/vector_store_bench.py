"""Measure the vector store on milvus-lite and on the local Milvus server (figures of docs/vector-store.md).

For each store and catalogue size: index time (upsert + the first search, which flushes and loads),
search p50 at batch 1 (sequential), and calls/s of 64 concurrent single-query searches with and without
merging (``search_batch_max`` 64 / 1), plain and with per-caller exclusions (like Recommend, which drops
each shopper's purchases). Server mode also reports the server's resident memory (milvus + etcd).

    .venv/bin/python scripts/vector_store_bench.py --store both --sizes 2000,10000 --dim 64

Uses the local server on 127.0.0.1:19530 (started, or reused when one answers; stopped only if started
here); every run works in a database of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from couturier.services.common.vectors import EmbeddingSpace, ProductVector, VectorStore


def group_rss_mib(pid: int) -> float:
    """Resident memory of every process in ``pid``'s process group (MiB)."""
    group = os.getpgid(pid)
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError, ValueError):
            continue
    return total / 1024


def server_rss_mib() -> float | None:
    """RSS of the process group listening as milvus on this machine (None when not found)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(cmdline) > 1 and cmdline[0].endswith(b"milvus") and b"run" in cmdline and b"standalone" in cmdline:
            return group_rss_mib(int(entry.name))
    return None


async def concurrent(
    store: VectorStore, space: EmbeddingSpace, queries: np.ndarray, seconds: float, **kw: Any
) -> float:
    """calls/s of ``len(queries)`` closed-loop callers, each sending single-query searches."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            exclude = [f"p{(i * 7 + j) % 1000}" for j in range(20)] if kw.get("exclusions") else []
            await store.search(space, queries[i], 10, exclude_ids=exclude)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(len(queries))))
    return done / (time.perf_counter() - started)


async def measure(uri: str, n: int, dim: int, seconds: float, wait_ms: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    space = EmbeddingSpace("bench_encoder", f"{n}", dim)
    items = [ProductVector(f"p{i}", vectors[i], category=f"c{i % 6}") for i in range(n)]
    queries = rng.normal(size=(64, dim)).astype(np.float32)
    result: dict[str, Any] = {"n": n, "dim": dim, "wait_ms": wait_ms}
    store = VectorStore(uri, search_batch_wait_s=wait_ms / 1000)
    unmerged = VectorStore(uri, search_batch_max=1)
    try:
        await store.drop(space)
        started = time.perf_counter()
        await store.upsert(space, items)
        await store.search(space, queries[0], 10)  # lite: flush + index; server: load
        result["index_s"] = round(time.perf_counter() - started, 2)
        times: dict[str, list[float]] = {"": [], "_unmerged": []}
        for i in range(200):  # interleaved, so that background work after indexing weighs on both alike
            for name, which in (("", store), ("_unmerged", unmerged)):
                t0 = time.perf_counter()
                await which.search(space, queries[i % 64], 10)
                times[name].append(time.perf_counter() - t0)
        for name, values in times.items():
            result["p50_ms_batch1" + name] = round(statistics.median(values) * 1000, 2)
        for name, which in (("merged", store), ("unmerged", unmerged)):
            for exclusions in (False, True):
                key = f"c64_calls_per_s_{name}" + ("_with_exclusions" if exclusions else "")
                result[key] = round(await concurrent(which, space, queries, seconds, exclusions=exclusions))
        result["merged_calls"] = store.search_stats.calls
        result["merged_searches"] = store.search_stats.searches
        await store.drop(space)
    finally:
        await unmerged.close()
        await store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("lite", "server", "both"), default="both")
    parser.add_argument("--sizes", default="2000,10000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each concurrent run")
    parser.add_argument("--wait-ms", type=float, default=0.0, help="search_batch_wait of the merging store")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict[str, Any] = {"cpus": os.cpu_count(), "runs": []}
    stores = ("lite", "server") if args.store == "both" else (args.store,)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in stores:
            server = None
            database = ""
            if mode == "lite":
                uri = str(Path(tmp) / "bench.db")
            else:
                from couturier.export.tools.milvus_server import LocalMilvusServer, create_database

                server = LocalMilvusServer(Path(tmp) / "milvus-server")
                root = server.start()
                database = f"couturier_bench_{secrets.token_hex(3)}"
                uri = create_database(root, database)
                report["server_reused"] = server.reused
            try:
                for n in sizes:
                    run = asyncio.run(measure(uri, n, args.dim, args.seconds, args.wait_ms))
                    run["store"] = mode
                    if mode == "server":
                        run["server_rss_mib"] = server_rss_mib()
                    report["runs"].append(run)
                    print(json.dumps(run), flush=True)
            finally:
                if server is not None:
                    from couturier.export.tools.milvus_server import drop_database

                    drop_database(server.uri, database)
                    server.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
