"""The real local tritonserver (nvidia-pytriton wheel, CPU) serving the generated repository.

The Triton virtualenv is created once (``$COUTURIER_TRITON_HOME/env`` or ``./var/triton/env``) and
reused across runs; each session gets its own backend dir, logs and repository.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from couturier.export.triton.environment import default_home
from couturier.export.triton.errors import ServerStartError
from couturier.export.triton.local_server import LocalTriton
from couturier.export.triton.repository import publish_model, read_model_config
from couturier.export.triton.versions import swap_version
from couturier.services.common.inference import (
    BackendUnavailable,
    BadInferenceInput,
    ModelNotReady,
    OnnxRuntimeBackend,
    TritonBackend,
)
from support.onnx_models import linear_model, linear_weights, two_output_model, user_weights, users_model

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
ENV_DIR = default_home() / "env"


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton")
    repo = root / "repo"
    publish_model(repo, "lin", linear_model(root / "lin.onnx", seed=0))
    publish_model(repo, "two", two_output_model(root / "two.onnx"))
    # a long queue delay so concurrent requests surely meet in one execution
    publish_model(repo, "batched", linear_model(root / "b.onnx", seed=3), max_queue_delay_us=50_000)
    publish_model(repo, "swapped", linear_model(root / "s1.onnx", seed=10))
    # inputs that do not share dim 0 (z [batch, 4], theta [users, 4]): served unbatched
    publish_model(repo, "users", users_model(root / "users.onnx", dim=4), batched=False)
    return repo


@pytest.fixture(scope="session")
def triton(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    server = LocalTriton(tmp_path_factory.mktemp("triton-home"), env_dir=ENV_DIR, ready_timeout_s=60)
    started = time.monotonic()
    server.setup()
    setup_s = time.monotonic() - started
    started = time.monotonic()
    server.start(repo)
    ready_s = time.monotonic() - started
    started = time.monotonic()
    models = ("lin", "two", "batched", "swapped", "users")
    for model in models:
        server.load(model)
    load_s = (time.monotonic() - started) / len(models)
    print(f"\n[triton] env setup {setup_s:.1f} s, server ready {ready_s:.2f} s, model load {load_s:.2f} s each")
    yield server
    server.stop()


@pytest.fixture
async def triton_backend(triton: LocalTriton):
    backend = TritonBackend(triton.grpc_url, timeout_s=10.0)
    yield backend
    await backend.close()


@pytest.fixture
async def local_backend(repo: Path):
    backend = OnnxRuntimeBackend(repo)
    yield backend
    await backend.close()


async def test_triton_matches_in_process_onnxruntime(
    triton_backend: TritonBackend, local_backend: OnnxRuntimeBackend
) -> None:
    rng = np.random.default_rng(1)
    assert await triton_backend.is_ready("lin")
    for batch in (1, 3, 64):
        x = rng.normal(size=(batch, 8)).astype(np.float32)
        served = await triton_backend.infer("lin", {"x": x})
        local = await local_backend.infer("lin", {"x": x})
        assert served["y"].shape == local["y"].shape == (batch, 4)
        np.testing.assert_allclose(served["y"], local["y"], rtol=0, atol=1e-6)
        w, b = linear_weights(0)
        np.testing.assert_allclose(served["y"], x @ w + b, rtol=1e-5, atol=1e-5)
    for model in ("lin", "two", "users"):  # metadata: the ONNX shapes on both (Triton's reshape undone)
        assert await triton_backend.input_shapes(model) == await local_backend.input_shapes(model), model
        assert await triton_backend.output_shapes(model) == await local_backend.output_shapes(model), model
    assert await triton_backend.output_shapes("two") == {"score": (-1,), "ids": (-1,)}
    img = rng.normal(size=(5, 3, 6)).astype(np.float32)
    w_in = rng.normal(size=5).astype(np.float32)
    served = await triton_backend.infer("two", {"img": img, "w": w_in})
    local = await local_backend.infer("two", {"img": img, "w": w_in})
    assert served.keys() == local.keys() == {"score", "ids"}
    assert served["score"].shape == (5,) and served["ids"].dtype == np.int64
    np.testing.assert_allclose(served["score"], local["score"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(served["ids"], local["ids"])
    only = await triton_backend.infer("two", {"img": img, "w": w_in}, outputs=["ids"])
    assert only.keys() == {"ids"}


async def test_unbatched_model_on_triton_matches_in_process_onnxruntime(
    triton: LocalTriton, repo: Path, triton_backend: TritonBackend, local_backend: OnnxRuntimeBackend
) -> None:
    config = read_model_config(repo, "users")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    loaded = client.get_model_config("users").config  # what the server runs with
    client.close()
    assert loaded.max_batch_size == 0 and [list(t.dims) for t in loaded.input] == [[-1, 4], [-1, 4]]
    rng = np.random.default_rng(5)
    cases = []
    for b, u in ((3, 5), (2, 1)):
        z = rng.normal(size=(b, 4)).astype(np.float32)
        theta = rng.normal(size=(u, 4)).astype(np.float32)
        cases.append((z, theta))
        served = await triton_backend.infer("users", {"z": z, "theta": theta})
        local = await local_backend.infer("users", {"z": z, "theta": theta})
        assert served.keys() == local.keys() == {"out", "value"}
        assert served["out"].shape == local["out"].shape == (b, u)
        assert served["value"].shape == local["value"].shape == (b,)
        for name in ("out", "value"):
            np.testing.assert_allclose(served[name], local[name], rtol=0, atol=1e-6)
        np.testing.assert_allclose(served["out"], z @ theta.T, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(served["value"], (z * user_weights()).sum(1), rtol=1e-5, atol=1e-5)
    # concurrent requests of different shapes are each run on their own
    results = await asyncio.gather(
        *(triton_backend.infer("users", {"z": z, "theta": t}, outputs=["out"]) for z, t in cases * 3)
    )
    for (z, theta), out in zip(cases * 3, results):
        assert out.keys() == {"out"}
        np.testing.assert_allclose(out["out"], z @ theta.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(BadInferenceInput):  # inner dim must match the config
        await triton_backend.infer("users", {"z": np.ones((2, 3), np.float32), "theta": np.ones((1, 4), np.float32)})


async def test_dynamic_batching_groups_requests_and_splits_them_back(
    triton: LocalTriton, triton_backend: TritonBackend
) -> None:
    w, b = linear_weights(3)
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(24)]
    results = await asyncio.gather(*(triton_backend.infer("batched", {"x": x}) for x in xs))
    for x, out in zip(xs, results):
        np.testing.assert_allclose(out["y"], x @ w + b, rtol=1e-5, atol=1e-5)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    deadline = time.monotonic() + 10
    while True:  # statistics are recorded just after the responses go out
        entries = client.get_inference_statistics("batched").model_stats
        requests = sum(entry.inference_stats.success.count for entry in entries)
        executions = sum(entry.execution_count for entry in entries)
        if requests >= 24 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    client.close()
    log.info("batched: %s requests in %s executions", requests, executions)
    assert requests == 24 and executions < requests


async def test_triton_errors_become_domain_errors(triton_backend: TritonBackend) -> None:
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ModelNotReady):
        await triton_backend.infer("no-such-model", {"x": x})
    with pytest.raises(ModelNotReady):
        await triton_backend.infer("lin", {"x": x}, version="9")
    with pytest.raises(BadInferenceInput):
        await triton_backend.infer("lin", {"x": x.astype(np.float64)})
    with pytest.raises(BadInferenceInput):
        await triton_backend.infer("lin", {"x": np.ones((2, 5), np.float32)})
    assert not await triton_backend.is_ready("no-such-model")


async def test_version_swap_under_load_loses_no_request(triton: LocalTriton, repo: Path, tmp_path: Path) -> None:
    w1, b1 = linear_weights(10)
    w2, b2 = linear_weights(11)
    x = np.random.default_rng(3).normal(size=(2, 8)).astype(np.float32)
    v1, v2 = x @ w1 + b1, x @ w2 + b2
    swapped = asyncio.Event()
    seen = {"v1": 0, "v2": 0}
    failures: list[BaseException] = []

    async def client() -> None:
        backend = TritonBackend(triton.grpc_url, timeout_s=30.0)
        after = 0
        try:
            while after < 10:  # keep going until 10 requests after the swap finished
                try:
                    y = (await backend.infer("swapped", {"x": x}))["y"]
                except Exception as exc:
                    failures.append(exc)
                    continue
                which = "v1" if np.allclose(y, v1, atol=1e-5) else "v2" if np.allclose(y, v2, atol=1e-5) else "?"
                assert which != "?", "output matches neither version"
                seen[which] += 1
                if swapped.is_set():
                    after += 1
        finally:
            await backend.close()

    async def operator() -> None:
        await asyncio.sleep(0.3)
        onnx_v2 = linear_model(tmp_path / "s2.onnx", seed=11)
        published = await asyncio.to_thread(publish_model, repo, "swapped", onnx_v2)
        result = await asyncio.to_thread(swap_version, triton.grpc_url, repo, "swapped", published.version)
        log.info("swap took %.2f s (was %s)", result.seconds, result.previous)
        assert result.previous == (1,) and result.current == 2
        swapped.set()

    await asyncio.gather(operator(), *(client() for _ in range(4)))
    assert not failures, failures[:3]
    assert seen["v1"] > 0 and seen["v2"] >= 40
    backend = TritonBackend(triton.grpc_url)
    np.testing.assert_allclose((await backend.infer("swapped", {"x": x}))["y"], v2, atol=1e-5)
    await backend.close()
    assert triton.control.ready_versions("swapped") == [2]
    assert triton.control.server_ready()  # no readiness blip left behind by the unloading v1
    assert list(read_model_config(repo, "swapped").version_policy.specific.versions) == [2]  # survives restart
    local = OnnxRuntimeBackend(repo)
    np.testing.assert_allclose((await local.infer("swapped", {"x": x}))["y"], v2, atol=1e-5)
    await local.close()


def test_load_of_one_version_and_unload(triton: LocalTriton, repo: Path, tmp_path: Path) -> None:
    triton.load("lin", version=1)
    assert triton.control.ready_versions("lin") == [1]
    triton.unload("two")
    assert triton.control.ready_versions("two") == []
    triton.load("two")
    assert triton.control.ready_versions("two") == [1]


def test_cli_publish_status_and_swap(triton: LocalTriton, repo: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from couturier.export.triton.cli import triton_app

    runner = CliRunner()
    onnx_path = linear_model(tmp_path / "c.onnx", seed=20)
    for _ in range(2):
        result = runner.invoke(triton_app, ["publish", str(onnx_path), "--repo", str(repo), "--name", "cli"])
        assert result.exit_code == 0, result.output
    assert "version 2" in result.output
    triton.load("cli", version=1)
    result = runner.invoke(triton_app, ["swap", "cli", "2", "--repo", str(repo), "--url", triton.grpc_url])
    assert result.exit_code == 0 and "serving version 2 (was [1])" in result.output, result.output
    result = runner.invoke(triton_app, ["status", "--url", triton.grpc_url])
    assert result.exit_code == 0 and "cli v2 READY" in result.output, result.output
    bad = runner.invoke(
        triton_app, ["publish", str(linear_model(tmp_path / "f.onnx", batch=2)), "--repo", str(repo), "--name", "x"]
    )
    assert bad.exit_code == 2 and "dynamic batch axis" in bad.output


def test_a_hanging_load_hits_the_readiness_timeout_and_is_killed(repo: Path, tmp_path: Path) -> None:
    """The real failure: a stub that cannot start (here the Python 3.8 stub) hangs the load forever."""
    server = LocalTriton(tmp_path / "home", env_dir=ENV_DIR)
    env = server.setup()
    wrong = next(v for v in ("3.8", "3.9", "3.10", "3.12") if v != env.python_version)
    stub = env.triton_root / "python_backend_stubs" / wrong / "triton_python_backend_stub"
    shutil.copyfile(stub, server.backends_dir / "onnxruntime" / "triton_python_backend_stub")
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready within"):
        server.start(repo, load_models=["lin"], ready_timeout_s=4.0)
    assert time.monotonic() - started < 15
    assert not server.running and server.pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)  # the server and its stubs are gone


async def test_stopped_triton_raises_backend_unavailable(repo: Path, tmp_path: Path) -> None:
    with LocalTriton(tmp_path / "home", env_dir=ENV_DIR) as server:
        server.start(repo, load_models=["lin"])
        backend = TritonBackend(server.grpc_url, timeout_s=5.0)
        x = np.ones((1, 8), np.float32)
        assert (await backend.infer("lin", {"x": x}))["y"].shape == (1, 4)
        started = time.monotonic()
        assert server.stop() == 0  # clean exit on SIGTERM
        log.info("clean stop took %.2f s", time.monotonic() - started)
        with pytest.raises(BackendUnavailable):
            await backend.infer("lin", {"x": x})
        assert not await backend.is_ready("lin")
        await backend.close()
