"""The session's trained models: every network trained at a tiny size, exported to ONNX and published.

Training takes minutes on a CPU, so every test that depends on the ``trained_models`` fixture (directly
or through another fixture) is marked ``integration`` automatically (see :mod:`support.plugin`) and is
left out of ``make test-fast``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


def train_models(root: Path) -> TrainedModels:
    """Train (MODEL_PROFILE + MODEL_OVERRIDES), export with the text encoder, publish, all under ``root``."""
    from couturier.export import pipeline
    from couturier.export.data.dataset import Profile, prepare

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
        root=root,
        data_dir=root / "data",
        runs_root=runs.root,
        onnx=dict(exported.paths),
        parity=exported.parity,
        repo_dir=root / "repo",
        versions=versions,
        wall_s={k: round(v, 1) for k, v in wall.items()},
    )
    (root / "fixture_wall_s.json").write_text(json.dumps(models.wall_s))
    return models
