"""Model rollout on the real local Triton: publish, load beside, verify, promote / canary, roll back.

Clients keep inferring while the operator acts; not one request may fail.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as pb

from couturier.export.triton.environment import default_home
from couturier.export.triton.errors import ModelControlError
from couturier.export.triton.local_server import LocalTriton
from couturier.export.triton.repository import publish_model
from couturier.export.triton.rollout import (
    RolloutError,
    RolloutResult,
    compare_outputs,
    pinning_hint,
    promote,
    resolve_urls,
    rollback,
    rollout,
    smoke_inputs,
)
from couturier.services.common.inference import TritonBackend
from couturier.services.common.model_repository import read_model_config
from support.onnx_models import linear_model, linear_weights, users_model

ENV_DIR = default_home() / "env"
X = np.random.default_rng(7).normal(size=(2, 8)).astype(np.float32)


def expected(seed: int) -> np.ndarray:
    w, b = linear_weights(seed)
    return X @ w + b


# -- without a server ----------------------------------------------------------------------------


def test_smoke_inputs_follow_the_config_shapes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_model(repo, "lin", linear_model(tmp_path / "lin.onnx"))
    publish_model(repo, "users", users_model(tmp_path / "users.onnx"), batched=False)
    lin = smoke_inputs(read_model_config(repo, "lin"))
    assert lin["x"].shape == (2, 8) and lin["x"].dtype == np.float32
    users = smoke_inputs(read_model_config(repo, "users"), size=3)
    assert users["z"].shape == (3, 4) and users["theta"].shape == (3, 4)
    config = pb.ModelConfig(max_batch_size=8)
    ids = config.input.add(name="ids", data_type=pb.TYPE_INT64, dims=[-1])
    scalar = config.input.add(name="w", data_type=pb.TYPE_FP32, dims=[1])
    scalar.reshape.SetInParent()
    feed = smoke_inputs(config)
    assert feed["ids"].shape == (2, 2) and set(np.unique(feed["ids"])) <= {0, 1} and ids.name == "ids"
    assert feed["w"].shape == (2,)  # a [batch] tensor travels as [batch, 1] but the model sees [batch]


def test_compare_outputs_names_the_difference() -> None:
    a = {"y": np.zeros((2, 3), np.float32)}
    assert compare_outputs(a, {"y": np.full((2, 3), 1e-6, np.float32)}, atol=1e-5, rtol=0, what="m") < 1e-5
    with pytest.raises(RolloutError, match="'y' differs .* by up to 0.5"):
        compare_outputs(a, {"y": np.full((2, 3), 0.5, np.float32)}, atol=1e-5, rtol=0, what="m")
    with pytest.raises(RolloutError, match="shape"):
        compare_outputs(a, {"y": np.zeros((3, 2), np.float32)}, atol=1e-5, rtol=0, what="m")
    with pytest.raises(RolloutError, match="outputs"):
        compare_outputs(a, {"z": np.zeros((2, 3), np.float32)}, atol=1e-5, rtol=0, what="m")


def test_pinning_hint_names_the_services_and_versions() -> None:
    hint = pinning_hint(RolloutResult("text_encoder", 3, (2,), (2, 3), "canary", ("127.0.0.1:1",), (), 0.0))
    assert 'COUTURIER_RETRIEVAL_MODEL_VERSIONS=\'{"text_encoder": "2"}\'' in hint
    assert "couturier triton rollback text_encoder --to 2" in hint
    assert "<service>" in pinning_hint(RolloutResult("mystery", 1, (), (1,), "canary", ("h:1",), (), 0.0))
    assert "without one of pref_loop" not in hint
    loop = pinning_hint(RolloutResult("pref_grad", 2, (1,), (1, 2), "canary", ("h:1",), (), 0.0))
    assert "COUTURIER_LATENT_MODEL_VERSIONS" in loop and "roll out pref_loop from the same export" in loop


def test_resolve_urls_expands_names_and_rejects_bad_ones() -> None:
    assert resolve_urls(["127.0.0.1:8001", "127.0.0.1:8001"]) == ["127.0.0.1:8001"]
    assert resolve_urls(["localhost:8001"]) == ["127.0.0.1:8001"]  # IPv4 preferred: one entry per server
    with pytest.raises(ModelControlError, match="host:port"):
        resolve_urls(["localhost"])


# -- on the real local Triton --------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    repo = root / "repo"
    publish_model(repo, "enc", linear_model(root / "enc1.onnx", seed=30))
    publish_model(repo, "item_encoder", linear_model(root / "item1.onnx", seed=40))
    publish_model(repo, "broken", linear_model(root / "broken1.onnx", seed=50))
    return repo


@pytest.fixture(scope="module")
def triton(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    server = LocalTriton(tmp_path_factory.mktemp("rollout-home"), env_dir=ENV_DIR, ready_timeout_s=60)
    server.setup()
    server.start(repo, load_models=["enc", "item_encoder", "broken"])
    yield server
    server.stop()


class Clients:
    """Clients inferring ``model`` in a loop, each pinned to one version; every failure is kept."""

    def __init__(self, url: str, model: str, outputs: dict[str, np.ndarray]) -> None:
        self.url, self.model, self.outputs = url, model, outputs
        self.seen: Counter[tuple[str, str]] = Counter()
        self.failures: list[tuple[str, BaseException]] = []
        self.stop = asyncio.Event()

    def which(self, y: np.ndarray) -> str:
        for name, out in self.outputs.items():
            if np.allclose(y, out, atol=1e-5):
                return name
        raise AssertionError("output matches no published version")

    async def run(self, pin: str, min_requests: int = 5) -> None:
        backend = TritonBackend(self.url, timeout_s=30.0)
        done = 0
        try:
            while not self.stop.is_set() or done < min_requests:
                try:
                    y = (await backend.infer(self.model, {"x": X}, version=pin))["y"]
                except Exception as exc:
                    self.failures.append((pin, exc))
                    await asyncio.sleep(0.01)
                    continue
                self.seen[(pin, self.which(y))] += 1
                done += 1
        finally:
            await backend.close()

    async def wait_until(self, served: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        """Wait until ``served()`` holds over the answers seen so far (polled every 10 ms)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not served():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what}: not seen within {timeout_s:g} s (seen {dict(self.seen)})")
            await asyncio.sleep(0.01)

    def answered(self, pin: str) -> int:
        return sum(count for (asked, _), count in self.seen.items() if asked == pin)

    async def around(self, pins: list[str], operator: Callable[[], Awaitable[None]]) -> None:
        """Run clients for ``pins`` while ``operator`` acts, then let them finish a few more calls."""

        async def act() -> None:
            await self.wait_until(lambda: all(self.answered(pin) > 0 for pin in pins), "every client answered")
            try:
                await operator()
            finally:
                self.stop.set()

        await asyncio.gather(act(), *(self.run(pin) for pin in pins))


@pytest.mark.slow
async def test_rollout_promote_and_rollback_lose_no_request(triton: LocalTriton, repo: Path, tmp_path: Path) -> None:
    url = triton.grpc_url
    clients = Clients(url, "enc", {"v1": expected(30), "v2": expected(31)})
    states: dict[str, list[int]] = {}

    async def operator() -> None:
        onnx_v2 = linear_model(tmp_path / "enc2.onnx", seed=31)
        result = await asyncio.to_thread(rollout, [url], repo, "enc", onnx_path=onnx_v2)
        assert (result.mode, result.previous, result.serving, result.version) == ("promoted", (1,), (2,), 2)
        assert len(result.smoke) == 1 and result.smoke[0].max_abs_diff <= 1e-5
        states["promoted"] = triton.control.ready_versions("enc")
        states["promoted_config"] = list(read_model_config(repo, "enc").version_policy.specific.versions)
        await clients.wait_until(lambda: clients.seen[("", "v2")] >= 5, "requests on version 2 alone")
        back = await asyncio.to_thread(rollback, [url], repo, "enc")
        assert (back.mode, back.version, back.previous, back.serving) == ("rolled-back", 1, (2,), (1,))

    await clients.around(["", "", "", ""], operator)
    assert not clients.failures, clients.failures[:3]
    assert clients.seen[("", "v1")] > 0 and clients.seen[("", "v2")] > 0, clients.seen
    assert states == {"promoted": [2], "promoted_config": [2]}
    assert triton.control.ready_versions("enc") == [1] and triton.control.server_ready()
    assert list(read_model_config(repo, "enc").version_policy.specific.versions) == [1]  # survives a restart


@pytest.mark.slow
async def test_canary_serves_old_and_new_pins_then_promotes(triton: LocalTriton, repo: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from couturier.export.triton.cli import triton_app

    url = triton.grpc_url
    onnx_v2 = linear_model(tmp_path / "item2.onnx", seed=41)
    outputs = {"v1": expected(40), "v2": expected(41)}
    canary = Clients(url, "item_encoder", outputs)
    cli: dict[str, str] = {}

    async def start_canary() -> None:
        args = ["rollout", "item_encoder", "--repo", str(repo), "--onnx", str(onnx_v2), "--url", url, "--canary"]
        result = await asyncio.to_thread(CliRunner().invoke, triton_app, args)
        assert result.exit_code == 0, result.output
        cli["output"] = result.output

    # while the canary starts only the served version is asked for; then all three pins together
    await canary.around(["", ""], start_canary)
    assert 'COUTURIER_SCORING_MODEL_VERSIONS=\'{"item_encoder": "1"}\'' in cli["output"], cli["output"]
    assert 'COUTURIER_SCORING_MODEL_VERSIONS=\'{"item_encoder": "2"}\'' in cli["output"]
    assert "canary; serving [1, 2] (was [1])" in cli["output"]
    assert triton.control.ready_versions("item_encoder") == [1, 2]
    assert list(read_model_config(repo, "item_encoder").version_policy.specific.versions) == [1, 2]

    both = Clients(url, "item_encoder", outputs)

    async def hold() -> None:
        await both.wait_until(
            lambda: min(both.seen[("1", "v1")], both.seen[("2", "v2")], both.seen[("", "v2")]) >= 5,
            "every pin served by its version",
        )

    await both.around(["1", "2", ""], hold)
    assert not canary.failures and not both.failures, (canary.failures + both.failures)[:3]
    assert both.seen[("1", "v1")] > 0 and both.seen[("2", "v2")] > 0
    assert both.seen[("1", "v2")] == both.seen[("2", "v1")] == 0
    # Triton gives requests without a version the highest loaded one: stable replicas must pin the old
    assert both.seen[("", "v2")] > 0 and both.seen[("", "v1")] == 0

    done = Clients(url, "item_encoder", outputs)

    async def finish() -> None:
        result = await asyncio.to_thread(promote, [url], repo, "item_encoder")
        assert (result.mode, result.version, result.serving, result.previous) == ("promoted", 2, (2,), (1,))

    await done.around(["2", ""], finish)
    assert not done.failures, done.failures[:3]
    assert done.seen[("", "v1")] == 0 and done.seen[("2", "v2")] > 0
    assert triton.control.ready_versions("item_encoder") == [2]
    assert list(read_model_config(repo, "item_encoder").version_policy.specific.versions) == [2]


@pytest.mark.slow
async def test_a_version_that_fails_to_load_is_undone(triton: LocalTriton, repo: Path) -> None:
    url = triton.grpc_url
    bad = repo / "broken" / "2"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"not an onnx model")
    clients = Clients(url, "broken", {"v1": expected(50)})
    raised: list[BaseException] = []

    async def operator() -> None:
        try:
            await asyncio.to_thread(rollout, [url], repo, "broken", version=2, timeout_s=60)
        except RolloutError as exc:
            raised.append(exc)

    try:
        await clients.around(["", "1"], operator)
    finally:
        shutil.rmtree(bad)
    assert len(raised) == 1 and "version 2" in str(raised[0]), raised
    assert not clients.failures, clients.failures[:3]
    assert triton.control.ready_versions("broken") == [1]
    assert clients.seen[("", "v1")] > 0
    assert read_model_config(repo, "broken").version_policy.WhichOneof("policy_choice") == "latest"  # untouched
