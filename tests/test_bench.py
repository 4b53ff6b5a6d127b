"""``couturier bench`` building blocks against a real grpc.aio server on 127.0.0.1: the closed-loop
load runner (counts, errors by status code, concurrency, stream timings), percentile maths and
the JSON + markdown report. No Triton here (the end-to-end tests start one)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from couturier.export.tools.bench import SECTIONS, LoadResult, percentile, render_markdown, run_load, write_report
from couturier.export.tools.launcher import free_port
from couturier.services.registry import make_host

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def health() -> AsyncIterator[health_pb2_grpc.HealthStub]:
    """The orchestrator's real server (health, reflection, ...) with its downstreams pointed at closed ports."""
    host = make_host(
        "orchestrator",
        port=0,
        health_interval_s=5.0,
        **{f"{key}_target": f"127.0.0.1:{free_port()}" for key in ("scoring", "latent", "retrieval")},
    )
    await host.start()
    channel = grpc.aio.insecure_channel(host.address)
    try:
        yield health_pb2_grpc.HealthStub(channel)
    finally:
        await channel.close()
        await host.stop(grace_s=0)


def _ordered(summary: dict[str, Any]) -> None:
    assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"] < 2000


async def test_count_mode_counts_every_call_and_errors_by_status_code(health: health_pb2_grpc.HealthStub) -> None:
    async def call(i: int) -> Any:
        kind = i % 5
        if kind == 1:  # unknown health service name -> NOT_FOUND from the server
            return await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        if kind == 2:  # a health Watch stream never ends: its deadline expires
            async for _ in health.Watch(health_pb2.HealthCheckRequest(), timeout=0.05):
                pass
        if kind == 3:  # a failure that is not a gRPC status
            raise ValueError("client-side failure")
        return await health.Check(health_pb2.HealthCheckRequest(), timeout=5)

    result = await run_load(call, concurrency=4, count=50)
    assert result.calls == 50 and result.ok == 20
    assert dict(result.errors) == {"NOT_FOUND": 10, "DEADLINE_EXCEEDED": 10, "ValueError": 10}
    summary = result.summary()
    assert summary["calls"] == 50 and summary["ok"] == 20 and summary["errors"] == dict(result.errors)
    _ordered(summary)
    assert summary["throughput_per_s"] == pytest.approx(20 / result.elapsed_s)


async def test_duration_mode_is_a_closed_loop_at_the_asked_concurrency(health: health_pb2_grpc.HealthStub) -> None:
    in_flight = peak = 0
    seen: list[int] = []

    async def call(i: int) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        seen.append(i)
        try:
            return await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        finally:
            in_flight -= 1

    result = await run_load(call, concurrency=8, duration_s=0.4)
    assert peak == 8  # every worker has one call in flight, never more
    assert result.errors == {} and result.calls == result.ok >= 16
    assert sorted(seen) == list(range(result.calls))  # each index once
    assert 0.4 <= result.elapsed_s < 5
    _ordered(result.summary())
    # duration and count together: whichever comes first
    assert (await run_load(call, concurrency=3, duration_s=30, count=7)).calls == 7


async def test_stream_calls_report_time_to_first_message(health: health_pb2_grpc.HealthStub) -> None:
    async def watch(i: int) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stream = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        async for _ in stream:
            first = loop.time() - t0
            break
        await asyncio.sleep(0.01)  # the rest of the "stream"
        stream.cancel()
        return {"first_message": first}

    result = await run_load(watch, concurrency=2, count=10)
    summary = result.summary()
    assert result.ok == 10 and len(result.extra_ms["first_message"]) == 10
    assert 0 < summary["first_message"]["p50_ms"] <= summary["first_message"]["p99_ms"]
    assert summary["first_message"]["p50_ms"] < summary["p50_ms"]  # first message before the whole call
    assert summary["p50_ms"] >= 10


def test_percentile_maths() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    empty = LoadResult(concurrency=4, elapsed_s=1.0).summary()
    assert empty["calls"] == 0 and empty["throughput_per_s"] == 0 and math.isnan(empty["p99_ms"])
    with pytest.raises(ValueError):
        asyncio.run(run_load(lambda i: asyncio.sleep(0), concurrency=1))


def _report(backends: bool) -> dict[str, Any]:
    level = LoadResult(concurrency=1, elapsed_s=2.0, latencies_ms=[1.0, 2.0, 3.0, 40.0])
    level.errors["UNAVAILABLE"] = 2
    stream = LoadResult(
        concurrency=16, elapsed_s=2.0, latencies_ms=[50.0, 60.0], extra_ms={"first_message": [5.0, 6.0]}
    )
    return {
        "started_at": "2026-01-01T00:00:00+00:00",
        "machine": {
            "cpu_count": 2,
            "platform": "Linux",
            "python": "3.11",
            "loadavg_before": [0.1],
            "loadavg_after": [1.0],
        },
        "data_sizes": {"catalogue_items": 10, "indexed_items": 5},
        "settings": {"levels": [1, 16], "duration_s": 2.0, "heavy_calls": 8, "timeout_s": 60.0, "compare_calls": 30},
        "stack": {
            "mode": "attached",
            "targets": {"orchestrator": "127.0.0.1:1"},
            "triton_url": "127.0.0.1:2" if backends else "",
        },
        "rpcs": {
            "scoring.ScoreItems": {"request": "10 ids", "heavy": False, "levels": [level.summary()]},
            "latent.Alter (stream)": {"request": "stream", "heavy": True, "levels": [stream.summary()]},
            "retrieval.SearchByImage": {
                "request": "no call succeeded",
                "heavy": False,
                "levels": [LoadResult(concurrency=1, elapsed_s=1.0).summary()],
            },
        },
        "backends": [
            {
                "model": "item_encoder",
                "batch": 1,
                "calls": 30,
                "triton_ms": 2.0,
                "onnxruntime_ms": 0.5,
                "ratio": 4.0,
                "triton_p90_ms": 3.0,
                "onnxruntime_p90_ms": 0.6,
                "triton_mean_ms": 2.2,
                "triton_server_ms": 1.2,
                "triton_queue_ms": 0.5,
                "triton_compute_ms": 0.6,
            }
        ]
        if backends
        else [],
        "triton_load_stats": {
            "item_encoder": {"requests": 9, "executions": 3, "avg_batch": 3.0, "queue_ms": 0.5, "compute_ms": 1.0}
        }
        if backends
        else {},
        "notes": ["2-core CPU numbers"],
        "wall_s": 12.0,
    }


def test_report_writes_json_and_markdown_with_every_section(tmp_path: Path) -> None:
    json_path, md_path = write_report(_report(backends=True), tmp_path / "out")
    assert json.loads(json_path.read_text())["rpcs"]["scoring.ScoreItems"]["levels"][0]["errors"] == {"UNAVAILABLE": 2}
    assert "NaN" not in json_path.read_text()  # strict JSON: no calls -> null percentiles
    assert json.loads(json_path.read_text())["rpcs"]["retrieval.SearchByImage"]["levels"][0]["p50_ms"] is None
    markdown = md_path.read_text()
    for heading in SECTIONS:
        assert heading in markdown, heading
    for needle in (
        "| scoring.ScoreItems | 1 | 6 | UNAVAILABLE 2 |",
        "| latent.Alter (stream) | 16 |",
        "| item_encoder | 1 |",
        "4.00",
        "NGC",
        "native onnxruntime backend on GPU",
        "2-core",
        "2.5 / 38.9",
        "(heavy: fewer calls)",
        "| retrieval.SearchByImage | 1 | 0 | 0 | - |",
    ):
        assert needle in markdown, needle
    without = render_markdown(_report(backends=False))
    assert all(heading in without for heading in SECTIONS)
    assert "Not measured" in without and "Not available" in without
