"""Read the on-disk layout of a model repository (light: no onnx import; services use it)."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from couturier.export.triton.model_config import VersionPolicy, read_config

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"


def list_versions(repo_dir: str | Path, name: str) -> list[int]:
    """Numbered version folders of ``name`` that hold a model file, ascending."""
    model_dir = Path(repo_dir) / name
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / MODEL_FILENAME).is_file()
    )


def read_model_config(repo_dir: str | Path, name: str) -> pb.ModelConfig:
    """The model's parsed ``config.pbtxt``."""
    return read_config(Path(repo_dir) / name / CONFIG_FILENAME)


def served_versions(repo_dir: str | Path, name: str) -> list[int]:
    """Versions the on-disk config's version policy selects, ascending."""
    policy = VersionPolicy.from_proto(read_model_config(repo_dir, name).version_policy)
    return policy.select(list_versions(repo_dir, name))


def model_path(repo_dir: str | Path, name: str, version: int) -> Path:
    """``<repo>/<name>/<version>/model.onnx``."""
    return Path(repo_dir) / name / str(version) / MODEL_FILENAME
