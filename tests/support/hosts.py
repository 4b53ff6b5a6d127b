"""Real services in-process on 127.0.0.1 over the session's trained models (in-process onnxruntime,
milvus-lite files under a test's temp folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from couturier.services.common.server import ServiceHost
from couturier.services.registry import make_host
from support.trained import TrainedModels

#: Seconds between dependency checks of the services the tests start (the orchestrator follows its
#: downstream services' health at this pace).
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
        wiring["product_images_dir"] = str(work_dir / "product_images")
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


def injected_host(
    key: str, *, backend: Any = None, store: Any = None, images: Any = None, **overrides: Any
) -> ServiceHost:
    """An unstarted in-process host of ``key`` whose ``build`` gets ``backend`` / ``store`` / ``images`` (e.g.
    the fakes of :mod:`support.fakes`) instead of the ones its settings describe; only those given are
    passed. Settings: port 0, fast health polling, then ``overrides``. The service closes what it was
    given when it stops. Give every dependency the service would otherwise open under the repository's
    ``var/`` (retrieval: ``images``, or ``product_images_dir`` under the test's ``tmp_path``)."""
    import importlib

    from couturier.services.common.config import load_settings

    settings = load_settings(key, **{"port": 0, "health_interval_s": HEALTH_INTERVAL_S, **overrides})
    build = importlib.import_module(f"couturier.services.{key}.service").build
    given = (("backend", backend), ("store", store), ("images", images))
    injected = {name: value for name, value in given if value is not None}
    return ServiceHost(build(settings, **injected), settings)
