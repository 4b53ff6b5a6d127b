"""Shared fixtures: services run for real on 127.0.0.1 (in-process grpc.aio servers or processes)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from couturier.services.common.server import ServiceHost
from couturier.services.registry import make_host


#: Seconds between dependency checks of the services the tests start (the latent service and the
#: orchestrator follow their downstream services' health at this pace).
HEALTH_INTERVAL_S = 0.1


def service_overrides(key: str, models: TrainedModels, work_dir: Path) -> dict[str, Any]:
    """Settings (``make_host`` overrides) wiring service ``key`` to the session's trained models.

    In-process onnxruntime over ``models.repo_dir``; scoring and retrieval each get their own milvus-lite
    file under ``work_dir`` (never the repository's var/). Downstream targets are not included.
    """
    if key == "orchestrator":
        return {}
    wiring: dict[str, Any] = {"inference_backend": "onnxruntime", "model_repository": str(models.repo_dir)}
    if key == "scoring":
        wiring["milvus_uri"] = str(work_dir / "milvus" / "scoring.db")
        wiring["user_vectors_dir"] = str(models.user_vectors_dir)
    elif key == "retrieval":
        wiring["milvus_uri"] = str(work_dir / "milvus" / "retrieval.db")
        wiring["tokenizer_json"] = str(models.repo_dir / "text_encoder" / "tokenizer.json")
    return wiring


def service_env(models: TrainedModels, work_dir: Path) -> dict[str, str]:
    """``service_overrides`` of every service as ``COUTURIER_<SERVICE>_<FIELD>`` environment variables."""
    return {
        f"COUTURIER_{key.upper()}_{field.upper()}": str(value)
        for key in ("scoring", "latent", "retrieval", "orchestrator")
        for field, value in service_overrides(key, models, work_dir).items()
    }


def real_host(key: str, models: TrainedModels, work_dir: Path, **overrides: Any) -> ServiceHost:
    """An unstarted in-process host of ``key`` over the trained models (``overrides`` on top)."""
    settings = {"port": 0, "health_interval_s": HEALTH_INTERVAL_S, **service_overrides(key, models, work_dir)}
    return make_host(key, **{**settings, **overrides})


async def assert_serving(host: ServiceHost, timeout_s: float = 30.0) -> None:
    """Waits until ``host`` reports SERVING; fails with its diagnostics (which dependency, why) if not."""
    from couturier.services.client import get_status, wait_until_serving

    try:
        await wait_until_serving(host.address, timeout_s=timeout_s)
    except TimeoutError as exc:
        status = await get_status(host.address)
        reasons = "; ".join(f"{d.name}: {d.detail}" for d in status.dependencies if not d.ready)
        pytest.fail(f"{host.definition.key} at {host.address} is not SERVING ({exc}): {reasons}")


@pytest.fixture
async def service_hosts(trained_models: TrainedModels, tmp_path: Path) -> AsyncIterator[dict[str, ServiceHost]]:
    """The four real services in-process, each on its own port, over the session's trained models.

    Scoring and retrieval (models, milvus-lite files under ``tmp_path``, user vectors, tokenizer) start
    first; then the latent service wired to them (its health follows theirs), then the orchestrator
    wired to all three. Every host is SERVING when the test starts; the indexes are empty.
    """
    hosts: dict[str, ServiceHost] = {}
    try:
        for key in ("scoring", "retrieval"):
            hosts[key] = real_host(key, trained_models, tmp_path)
            await hosts[key].start()
        hosts["latent"] = real_host(
            "latent",
            trained_models,
            tmp_path,
            scoring_target=hosts["scoring"].address,
            retrieval_target=hosts["retrieval"].address,
        )
        await hosts["latent"].start()
        hosts["orchestrator"] = real_host(
            "orchestrator",
            trained_models,
            tmp_path,
            **{f"{key}_target": hosts[key].address for key in ("scoring", "latent", "retrieval")},
        )
        await hosts["orchestrator"].start()
        for host in hosts.values():
            await assert_serving(host)
        yield hosts
    finally:
        for host in reversed(list(hosts.values())):
            await host.stop(grace_s=0)


# -- trained models (once per session) -----------------------------------------------------------

#: Data of the session's trained models: ``couturier.export.data.dataset.Profile`` fields.
MODEL_DATA: dict[str, Any] = {"name": "tiny", "items_per_class": 40, "heldout_per_class": 8, "n_users": 80}
#: Pipeline training profile of ``trained_models``.
MODEL_PROFILE = "tiny"
#: Per-network overrides merged over ``couturier.export.pipeline.TINY_OVERRIDES`` (tiny profile only).
#: The plain tiny GAN (3 steps) draws near-constant images and 1-epoch DVBPR scores everything ~0,
#: too flat for optimisation tests; these sizes add ~20 s and give working gradients.
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "gan": {"steps": 150, "max_seconds": 60.0},
    "dvbpr": {"epochs": 3, "max_seconds": 30.0},
}


@dataclass(frozen=True)
class TrainedModels:
    """Every network trained, exported to ONNX (parity-checked) and published into a model repository."""

    root: Path  # session temp folder holding everything below
    data_dir: Path  # prepared data (couturier.export.data.dataset.load_prepared)
    runs_root: Path  # <root>/runs/<profile>: one folder per network, user_vectors.npz, onnx/
    onnx: dict[str, Path]  # model name -> exported .onnx
    parity: dict[str, Any]  # export_all's parity report
    repo_dir: Path  # Triton model repository (OnnxRuntimeBackend(repo_dir) serves it in-process)
    versions: dict[str, str]  # model name -> published version
    wall_s: dict[str, float]  # prepare / train / export / publish / total seconds

    @property
    def user_vectors(self) -> Path:
        """``user_vectors.npz`` (``theta`` (U,K), ``user_ids``) of the trained DVBPR."""
        return self.runs_root / "user_vectors.npz"

    @property
    def user_vectors_dir(self) -> Path:
        """Where the scoring service reads ``item_encoder_v<N>.npz`` (published with the models)."""
        return self.root / "user_vectors"


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> TrainedModels:
    """Train (MODEL_PROFILE + MODEL_OVERRIDES), export with the text encoder, publish: once per session."""
    from couturier.export import pipeline
    from couturier.export.data.dataset import Profile, prepare

    root = tmp_path_factory.mktemp("trained-models")
    wall: dict[str, float] = {}
    started = time.perf_counter()
    prepared = prepare(root / "data", Profile(**MODEL_DATA), progress=False)
    wall["prepare"] = time.perf_counter() - started
    with pytest.MonkeyPatch.context() as patch:
        for network, overrides in MODEL_OVERRIDES.items():
            patch.setitem(pipeline.TINY_OVERRIDES, network, {**pipeline.TINY_OVERRIDES.get(network, {}), **overrides})
        mark = time.perf_counter()
        runs = pipeline.train_all(prepared, root / "runs", MODEL_PROFILE, progress=False)
    wall["train"] = time.perf_counter() - mark
    mark = time.perf_counter()
    exported = pipeline.export_all(runs.root, with_text_encoder=True)
    wall["export"] = time.perf_counter() - mark
    mark = time.perf_counter()
    versions = pipeline.publish_all(exported.paths, root / "repo")
    pipeline.publish_user_vectors(runs.root, versions["item_encoder"], root / "user_vectors")
    wall["publish"] = time.perf_counter() - mark
    wall["total"] = time.perf_counter() - started
    models = TrainedModels(
        root=root, data_dir=root / "data", runs_root=runs.root, onnx=dict(exported.paths), parity=exported.parity,
        repo_dir=root / "repo", versions=versions, wall_s={k: round(v, 1) for k, v in wall.items()},
    )
    (root / "fixture_wall_s.json").write_text(json.dumps(models.wall_s))
    return models
