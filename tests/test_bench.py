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
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from couturier.export.tools.bench import (
    SECTIONS,
    BenchData,
    LoadResult,
    percentile,
    render_markdown,
    rpc_cases,
    run_load,
    write_report,
)
from couturier.export.tools.bench_limits import (
    LimitOptions,
    LimitWorks,
    attach_limit,
    backends_summary,
    measure_limits,
    top_k,
)
from couturier.export.tools.launcher import free_port
from couturier.services.registry import make_host
from support.trained import TrainedModels

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


def _backend_row(model: str, batch: int, ratio: float) -> dict[str, Any]:
    return {
        "model": model,
        "batch": batch,
        "calls": 30,
        "triton_ms": 2.0,
        "onnxruntime_ms": 2.0 / ratio,
        "ratio": ratio,
        "triton_p90_ms": 3.0,
        "onnxruntime_p90_ms": 0.6,
        "triton_mean_ms": 2.2,
        "triton_server_ms": 1.2,
        "triton_queue_ms": 0.5,
        "triton_compute_ms": 0.6,
    }


def _report(backends: bool) -> dict[str, Any]:
    level = LoadResult(concurrency=1, elapsed_s=2.0, latencies_ms=[1.0, 2.0, 3.0, 40.0])
    level.errors["UNAVAILABLE"] = 2
    stream = LoadResult(
        concurrency=16, elapsed_s=2.0, latencies_ms=[50.0, 60.0], extra_ms={"first_message": [5.0, 6.0]}
    )
    rows = [_backend_row("item_encoder", 1, 4.0), _backend_row("item_encoder", 32, 1.2)]
    rows.append(_backend_row("pref_grad", 32, 1.6))
    return {
        "started_at": "2026-01-01T00:00:00+00:00",
        "machine": {
            "cpu_count": 2,
            "cpu_model": "Test CPU @ 2.0GHz",
            "memory_gib": 7.8,
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
        "backends": rows if backends else [],
        "backends_summary": backends_summary(rows if backends else []),
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


def _levels(*levels: tuple[int, float, float]) -> list[dict[str, Any]]:
    """Level summaries with the given (concurrency, p50 ms, calls/s)."""
    return [{"concurrency": c, "p50_ms": p50, "throughput_per_s": rate} for c, p50, rate in levels]


def test_ratios_to_the_limit_and_the_backend_headline() -> None:
    entry: dict[str, Any] = {"levels": _levels((1, 3.0, 300.0), (16, 40.0, 400.0), (64, 150.0, 420.0))}
    attach_limit(entry, {"p50_ms": 0.5, "throughput_per_s": 2000.0, "calls": 50})
    assert entry["limit"]["p50_ms"] == 0.5
    ratios = [lvl["p50_ratio_to_limit"] for lvl in entry["levels"]]
    shares = [lvl["throughput_share_of_limit"] for lvl in entry["levels"]]
    assert ratios == pytest.approx([6.0, 80.0, 300.0])
    assert shares == pytest.approx([0.15, 0.2, 0.21])
    # no limit (or a failed one, or a level without calls): null ratios, never a crash or a made-up number
    failed: dict[str, Any] = {"levels": _levels((1, float("nan"), 0.0))}
    attach_limit(failed, {"error": "BadInferenceInput: ...", "p50_ms": None, "throughput_per_s": None})
    assert (
        failed["levels"][0]["p50_ratio_to_limit"] is None and failed["levels"][0]["throughput_share_of_limit"] is None
    )
    missing: dict[str, Any] = {"levels": _levels((1, 2.0, 10.0))}
    attach_limit(missing, None)
    assert missing["limit"]["error"] == "not measured" and missing["levels"][0]["p50_ratio_to_limit"] is None

    rows = [_backend_row("item_encoder", 1, 4.0), _backend_row("item_encoder", 32, 1.2)]
    rows += [_backend_row("pref_grad", 32, 1.6), _backend_row("text_encoder", 32, 1.3)]
    summary = backends_summary(rows, [{"model": "shift_grad", "batch": 32, "reason": "too big"}])
    assert summary["median_ratio_batch32"] == pytest.approx(1.3)  # batch-32 rows only
    assert summary["models_batch32"] == ["item_encoder", "pref_grad", "text_encoder"]
    assert summary["median_ratio_all"] == pytest.approx(1.45) and summary["max_ratio"] == 4.0
    assert summary["skipped"][0]["model"] == "shift_grad"
    assert backends_summary([])["median_ratio_batch32"] is None


def test_markdown_states_the_limit_table_machine_stores_and_load_generator_share() -> None:
    report = _report(backends=True)
    report["settings"]["levels"] = [1, 16, 64]
    report["stacks"] = {
        "lite": {**report["stack"], "store": "lite", "store_uri": {"scoring": "/w/scoring.db"}},
        "server": {**report["stack"], "store": "server", "store_uri": {"scoring": "http://127.0.0.1:19530/db"}},
    }
    report["limits"] = {"method": {"p50": "median", "throughput": "2 threads", "model_versions": {"x": "1"}}}
    report["limits"]["rpcs"] = {"scoring.ScoreItems": {"p50_ms": 0.5, "throughput_per_s": 2000.0}}
    report["rpcs"] = {
        "server/scoring.ScoreItems": {
            "rpc": "scoring.ScoreItems",
            "store": "server",
            "request": "10 ids",
            "heavy": False,
            "levels": [
                {**lvl, "calls": 1, "errors": {}, "p90_ms": 1.0, "p99_ms": 1.0, "load_generator_cpu_share": share}
                for lvl, share in zip(_levels((1, 2.5, 300.0), (16, 30.0, 500.0), (64, 90.0, 200.0)), (0.2, 0.4, 0.3))
            ],
            "rpc_floor": {"service": "scoring", "p50_ms": 0.31},
        },
        "server/retrieval.SearchByImage": {
            "rpc": "retrieval.SearchByImage",
            "store": "server",
            "request": "png",
            "heavy": False,
            "levels": [LoadResult(concurrency=1, elapsed_s=1.0).summary()],
        },
    }
    for entry in report["rpcs"].values():
        attach_limit(entry, report["limits"]["rpcs"].get(entry["rpc"]))
    markdown = render_markdown(report)
    lines = markdown.splitlines()
    header = "| RPC | limit p50 | limit calls/s | p50 ratio at c=1 | throughput share at c=16 | at c=64 | rpc floor |"
    assert header in lines
    assert "| server/scoring.ScoreItems | 0.50 ms | 2000.0 | 5.00x | 25% | 10% | 0.31 ms |" in lines
    assert "| server/retrieval.SearchByImage | - | - | - | - | - | - |" in lines
    assert "no limit for `server/retrieval.SearchByImage`: not measured" in markdown
    assert "- machine: 2 CPUs (Test CPU @ 2.0GHz), 7.8 GiB memory;" in markdown
    assert "`lite` = milvus-lite" in markdown and "`server` = Milvus standalone server" in markdown
    assert "http://127.0.0.1:19530/db" in markdown and "keyed `<store>/<rpc>`" in markdown
    assert "its own CPU time per level was 20% to 40% of (cores x wall time of the level), median 30%" in markdown
    assert "**Median Triton / onnxruntime ratio at batch 32: 1.40x**" in markdown
    assert "load gen CPU" in markdown and " 40% |" in markdown


def test_every_rpc_the_bench_loads_has_an_in_process_limit() -> None:
    from unittest.mock import MagicMock

    names = [case.name for case in rpc_cases(MagicMock(), MagicMock(), 1.0)]
    works = LimitWorks(MagicMock(), MagicMock(), MagicMock()).works()
    assert names and set(names) == set(works)


def test_exact_search_matches_brute_force_with_filters() -> None:
    rng = np.random.default_rng(0)
    vectors, query = rng.normal(size=(50, 8)), rng.normal(size=8)
    scores = vectors @ query
    assert [r for r, _ in top_k(vectors, query, 5)] == list(np.argsort(-scores)[:5])
    keep = np.arange(50) % 3 == 0
    found = top_k(vectors, query, 5, keep)
    assert [r for r, _ in found] == [r for r in np.argsort(-scores) if keep[r]][:5]
    assert found[0][1] == pytest.approx(scores[found[0][0]])
    assert len(top_k(vectors, query, 100, np.arange(50) < 3)) == 3 and top_k(vectors, query, 5, keep & False) == []


@pytest.mark.integration
@pytest.mark.timeout(900)  # the session's trained models may be built first
def test_limits_of_light_rpcs_against_the_model_repository(trained_models: TrainedModels) -> None:
    """The in-process limit runs the real retrieval encoder: a catalogue image searched for finds itself."""
    from couturier.export.tools.bench_limits import InlineOnnxRuntime, LimitSetup, served_model_versions
    from couturier.services.common.images import encode_png
    from couturier.services.common.model_metadata import ModelCategories
    from couturier.services.common.models import ITEM_ENCODER, PREF_GRAD
    from couturier.services.scoring.users import UserDirectory

    repo, vectors = trained_models.repo_dir, trained_models.user_vectors_dir
    versions = served_model_versions(repo)
    table = UserDirectory(vectors).table(versions[ITEM_ENCODER])
    backend = InlineOnnxRuntime(repo)
    categories = asyncio.run(ModelCategories(backend).of(PREF_GRAD, versions[PREF_GRAD]))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    data = BenchData(
        users=[str(u) for u in table.user_ids[:8]],
        product_ids=[f"p{i}" for i in range(40)],
        query_pngs=[encode_png(images[i]) for i in (7, 3)],  # call i searches for product p7 / p3
        images=images[:8],
        categories=np.arange(8) % len(categories),
        category_names=tuple(categories),
        theta=table.theta[:8],
        tokenizer_json=repo / "text_encoder" / "tokenizer.json",
        indexed_ids=[f"p{i}" for i in range(40)],
        indexed_images=images,
        indexed_categories=[categories[i % len(categories)] for i in range(40)],
    )
    setup = asyncio.run(LimitSetup.build(backend, data, vectors, versions))
    works = LimitWorks(setup, data, backend).works()
    hits = asyncio.run(works["retrieval.SearchByImage"](0))
    assert len(hits) == 10 and hits[0][0] == 7 and hits[0][1] == pytest.approx(1.0, abs=1e-3)  # L2-normalised
    assert asyncio.run(works["retrieval.SearchByImage"](1))[0][0] == 3
    scores = asyncio.run(works["scoring.ScoreItems"](0))
    expected = setup.item_vectors[:10] @ table.vector(data.users[0])  # call 0 scores p0..p9 for user 0
    assert scores == pytest.approx(expected, rel=1e-5)
    asyncio.run(backend.close())

    names = ["scoring.ScoreItems", "scoring.Recommend", "retrieval.SearchByImage"]
    result = measure_limits(data, repo, vectors, names, LimitOptions(duration_s=0.2, threads=2, min_calls=3))
    assert result["method"]["threads"] == 2 and result["setup"]["indexed_products"] == 40
    for name in names:
        limit = result["rpcs"][name]
        assert "error" not in limit, limit
        assert 0 < limit["p50_ms"] < 1000 and limit["calls"] >= 3 and limit["throughput_per_s"] > 0
        assert limit["throughput_calls"] >= 2 and limit["throughput_threads"] == 2
    assert result["rpcs"]["retrieval.SearchByImage"]["model_calls"] == {"retrieval_encoder [1, 3, 32, 32]": 1}
    assert result["rpcs"]["scoring.Recommend"]["model_calls"] == {}  # numpy only
    # an RPC whose limit cannot run is reported, not fatal
    broken = measure_limits(data, repo, vectors, ["no.SuchRpc"], LimitOptions(duration_s=0.1, threads=1))
    assert broken["rpcs"]["no.SuchRpc"]["p50_ms"] is None and "error" in broken["rpcs"]["no.SuchRpc"]


def test_bench_cli_store_and_levels_options() -> None:
    import typer
    from typer.testing import CliRunner

    from couturier.export.tools.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--store", "--levels", "--limit-duration-s", "--only", "both"):
        assert option in result.output, option
    result = runner.invoke(app, ["bench", "--store", "disk"])
    assert result.exit_code == 2 and "--store must be lite, server or both" in result.output
    result = runner.invoke(app, ["bench", "--levels", "1,x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output
