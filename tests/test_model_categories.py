"""The category list travels with the models: the exporter writes it into the ONNX metadata of every
model that takes a category one-hot, publishing copies it into ``config.pbtxt`` (where Triton shows
it), both inference backends read it back, and the latent service maps category names with it.

Fast: tiny onnx.helper models with ``pref_grad``'s signature (tests/support/onnx_models.py), the real
latent service over real gRPC on 127.0.0.1 and in-process onnxruntime. The torch export of a real
generator and the route through a real local Triton are the ``integration`` tests at the end.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from couturier.export.triton.errors import RepositoryError
from couturier.export.triton.repository import publish_model, read_model_config
from couturier.services.common.config import LatentSettings
from couturier.services.common.errors import PreconditionFailed
from couturier.services.common.inference import InferenceBackend, OnnxRuntimeBackend, TritonBackend
from couturier.services.common.model_metadata import (
    ModelCategories,
    decode_categories,
    encode_categories,
    listed,
)
from couturier.services.common.models import INV_GRAD, PREF_GRAD
from couturier.services.common.server import ServiceHost
from couturier.services.latent import service as latent_service
from couturier.v1 import common_pb2, latent_pb2, latent_pb2_grpc
from support.fakes import FakeInferenceBackend
from support.onnx_models import pref_grad_model

SHOES = ("boots", "sandals", "slippers")
PARAMETER = "couturier.categories"


# -- the metadata value -----------------------------------------------------------------------------


def test_category_lists_round_trip_and_bad_ones_are_refused() -> None:
    names = ("T-shirt / top", "robe d'été", "長靴")
    assert decode_categories(encode_categories(names)) == names
    for bad, why in [
        ([], "empty"),
        (["a", "b", "a"], "repeat: a"),
        (["a", ""], "non-empty"),
        (["a", 3], "non-empty strings"),
    ]:
        with pytest.raises(ValueError, match=why):
            encode_categories(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=why):
            decode_categories(json.dumps(bad))
    with pytest.raises(ValueError, match="JSON list"):
        decode_categories('{"a": 1}')
    with pytest.raises(ValueError, match="not JSON"):
        decode_categories("tops, bags")
    many = [f"c{i}" for i in range(40)]
    assert listed(many) == ", ".join(many[:12]) + ", ... and 28 more"
    assert listed(SHOES) == "boots, sandals, slippers"


# -- publishing and the backends --------------------------------------------------------------------


def _repo(tmp_path: Path, categories: tuple[str, ...] | None, name: str = PREF_GRAD) -> Path:
    repo = tmp_path / "repo"
    onnx_path = pref_grad_model(tmp_path / f"{name}.onnx", categories)
    publish_model(repo, name, onnx_path)  # batched, as the exporter publishes gradient models
    return repo


def test_publishing_copies_the_categories_into_the_config_and_refuses_a_change(tmp_path: Path) -> None:
    repo = _repo(tmp_path, SHOES)
    config = read_model_config(repo, PREF_GRAD)
    assert decode_categories(config.parameters[PARAMETER].string_value) == SHOES
    again = publish_model(repo, PREF_GRAD, pref_grad_model(tmp_path / "same.onnx", SHOES), parameters={"x": "1"})
    assert again.version == 2 and set(again.config.parameters) == {"x", PARAMETER}
    for other, shown in [(("clogs", "sandals", "slippers"), '"clogs"'), (None, "nothing")]:
        with pytest.raises(RepositoryError, match="couturier export --repo DIR") as info:
            publish_model(repo, PREF_GRAD, pref_grad_model(tmp_path / "other.onnx", other))
        assert shown in str(info.value) and '"boots"' in str(info.value)
    assert sorted(p.name for p in (repo / PREF_GRAD).iterdir() if p.name.isdigit()) == ["1", "2"]


class _TritonClient:
    """What TritonBackend.model_metadata asks Triton for, answered from the repository's config."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.asked: list[tuple[str, str]] = []

    async def get_model_config(self, model: str, model_version: str = "", client_timeout: Any = None) -> Any:
        self.asked.append((model, model_version))
        return SimpleNamespace(config=read_model_config(self.repo, model))

    async def close(self) -> None:
        pass


async def test_both_backends_read_the_categories_of_a_published_model(tmp_path: Path) -> None:
    repo = _repo(tmp_path, SHOES)
    local, remote = OnnxRuntimeBackend(repo), TritonBackend("127.0.0.1:1")
    client = _TritonClient(repo)
    remote._client = client
    try:
        for backend in (local, remote):
            metadata = await backend.model_metadata(PREF_GRAD, "1")
            assert metadata == {"categories": json.dumps(list(SHOES))}, backend.name
            assert await ModelCategories(backend).of(PREF_GRAD, "1") == SHOES
        assert client.asked == [(PREF_GRAD, "1")] * 2
    finally:
        await local.close()
        await remote.close()


async def test_categories_are_read_once_per_version_and_models_used_together_must_agree() -> None:
    backend = FakeInferenceBackend(versions={PREF_GRAD: ["1", "2"], INV_GRAD: ["1", "2"]})
    asked: list[tuple[str, str]] = []
    answer = backend.model_metadata

    async def counted(model: str, version: str = "") -> dict[str, str]:
        asked.append((model, version))
        return await answer(model, version)

    backend.model_metadata = counted  # type: ignore[method-assign]
    categories = ModelCategories(backend)
    for _ in range(3):
        assert await categories.common({PREF_GRAD: "1", INV_GRAD: "1"}) == backend.dims.categories
    assert asked == [(PREF_GRAD, "1"), (INV_GRAD, "1")]
    backend.metadata[PREF_GRAD] = {"categories": encode_categories(SHOES)}
    assert await categories.of(PREF_GRAD, "2") == SHOES  # a new version is read; v1 stays cached
    with pytest.raises(PreconditionFailed, match=r"pref_grad v2 and inv_grad v1 have different categories"):
        await categories.common({PREF_GRAD: "2", INV_GRAD: "1"})
    backend.metadata[INV_GRAD] = {"categories": "tops"}
    with pytest.raises(PreconditionFailed, match=r"inv_grad v2 has an invalid category list"):
        await ModelCategories(backend).of(INV_GRAD, "2")


# -- the latent service over a repository of the shop's own categories -----------------------------


class _Recording(OnnxRuntimeBackend):
    """In-process onnxruntime that keeps the category one-hots it was sent."""

    def __init__(self, repo: Path) -> None:
        super().__init__(repo)
        self.one_hots: list[np.ndarray] = []

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None, version: str = ""
    ) -> dict[str, np.ndarray]:
        self.one_hots.append(np.asarray(inputs["category"]))
        return await super().infer(model, inputs, outputs, version)


@asynccontextmanager
async def _latent(backend: InferenceBackend) -> AsyncIterator[latent_pb2_grpc.LatentOptimizationServiceStub]:
    # the reference optimiser: these repositories hold the pref_grad stub only (no loop models)
    settings = LatentSettings(port=0, health_interval_s=5.0, optimiser="reference")
    host = ServiceHost(latent_service.build(settings, backend=backend), settings)
    await host.start()
    channel = grpc.aio.insecure_channel(host.address)
    try:
        yield latent_pb2_grpc.LatentOptimizationServiceStub(channel)
    finally:
        await channel.close()
        await host.stop(grace_s=0)


def _design(category: str) -> latent_pb2.DesignRequest:
    audience = latent_pb2.ResolvedAudience(model=common_pb2.ModelVersion(name="item_encoder", version="1"))
    rng = np.random.default_rng(0)
    for user in ("u1", "u2"):
        audience.users.add(user_id=user, vector=rng.normal(0, 1, 6).astype(np.float32).tolist())
    return latent_pb2.DesignRequest(
        resolved_audience=audience,
        category=category,
        n=2,
        seed=3,
        optimizer=latent_pb2.OptimizerParams(steps=3),
    )


async def _refused(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


async def test_latent_service_designs_in_the_categories_its_models_carry(tmp_path: Path) -> None:
    backend = _Recording(_repo(tmp_path, SHOES))
    async with _latent(backend) as latent:
        designed = await latent.Design(_design("sandals"))
        assert len(designed.designs) == 2 and {d.generated.category for d in designed.designs} == {"sandals"}
        assert backend.one_hots and all((oh == [0, 1, 0]).all() for hot in backend.one_hots for oh in hot)
        calls = len(backend.one_hots)
        details = await _refused(latent.Design(_design("tops")), grpc.StatusCode.INVALID_ARGUMENT)
        assert "unknown category 'tops'" in details and "boots, sandals, slippers" in details
        assert len(backend.one_hots) == calls  # refused before any inference


async def test_latent_service_refuses_models_exported_without_categories(tmp_path: Path) -> None:
    async with _latent(OnnxRuntimeBackend(_repo(tmp_path, None))) as latent:
        details = await _refused(latent.Design(_design("sandals")), grpc.StatusCode.FAILED_PRECONDITION)
        assert "model pref_grad v1 carries no category list" in details
        assert "re-export with couturier export" in details


# -- the exporter (torch) ---------------------------------------------------------------------------


@pytest.mark.integration  # a torch.onnx export (seconds)
def test_an_exported_generator_carries_its_categories(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from couturier.export.models.gan import GanConfig, Generator, one_hot
    from couturier.export.onnx_io import category_metadata, export_forward, read_metadata

    generator = Generator(GanConfig(image_size=32, z_dim=8, n_categories=3, g_channels=(16, 8), d_channels=(8, 16)))
    example = (torch.randn(2, 8), one_hot(torch.tensor([0, 2]), 3))
    path = export_forward(
        generator,
        example,
        tmp_path / "generator.onnx",
        input_names=["z", "category"],
        output_names=["image"],
        metadata=category_metadata(SHOES),
    )
    assert decode_categories(read_metadata(path)["categories"]) == SHOES
    repo = tmp_path / "repo"
    publish_model(repo, "generator", path)
    assert decode_categories(read_model_config(repo, "generator").parameters[PARAMETER].string_value) == SHOES


def test_the_gan_checkpoint_names_its_categories_or_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from couturier.export.models.gan import GanConfig
    from couturier.export.training.common import CHECKPOINT, save_checkpoint
    from couturier.export.training.train_gan import gan_category_names

    config = GanConfig(n_categories=3).to_dict()
    save_checkpoint(tmp_path / "named" / CHECKPOINT, config=config, category_names=list(SHOES))
    assert gan_category_names(tmp_path / "named") == SHOES
    save_checkpoint(tmp_path / "old" / CHECKPOINT, config=config)
    save_checkpoint(tmp_path / "short" / CHECKPOINT, config=config, category_names=["boots"])
    for run in ("old", "short"):
        with pytest.raises(ValueError, match="does not name its 3 categories.*couturier train --only gan"):
            gan_category_names(tmp_path / run)


@pytest.mark.integration  # a real local tritonserver (seconds once its environment is set up)
async def test_a_real_triton_shows_the_categories_and_the_latent_service_uses_them(tmp_path: Path) -> None:
    from couturier.export.triton.environment import default_home
    from couturier.export.triton.local_server import LocalTriton

    repo = _repo(tmp_path, SHOES)
    server = LocalTriton(tmp_path / "triton-home", env_dir=default_home() / "env", ready_timeout_s=60)
    server.setup()
    server.start(repo)
    remote = TritonBackend(server.grpc_url, timeout_s=10.0)
    try:
        server.load(PREF_GRAD)
        assert await ModelCategories(remote).of(PREF_GRAD, "1") == SHOES
        async with _latent(remote) as latent:
            designed = await latent.Design(_design("slippers"))
            assert {d.generated.category for d in designed.designs} == {"slippers"}
            details = await _refused(latent.Design(_design("tops")), grpc.StatusCode.INVALID_ARGUMENT)
            assert "boots, sandals, slippers" in details
    finally:
        await remote.close()
        server.stop()
