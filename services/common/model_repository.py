"""The on-disk model repository as the services read it: layout, version policy, ``config.pbtxt``.

The exporter writes repositories with the same functions; this module is
the one definition of the layout and of the version policy. No onnx or torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"


class TritonError(RuntimeError):
    """Base class of the model-serving layer's errors (repository, server, model control)."""


class RepositoryError(TritonError):
    """The model repository is missing, malformed, or a publish would break it."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which numbered versions Triton serves: the ``latest`` N, ``all``, or ``specific`` ones."""

    latest: int | None = 1
    specific: tuple[int, ...] = ()
    all: bool = False

    @classmethod
    def latest_n(cls, n: int = 1) -> VersionPolicy:
        if n < 1:
            raise ValueError("latest needs n >= 1")
        return cls(latest=n)

    @classmethod
    def only(cls, *versions: int) -> VersionPolicy:
        if not versions or any(v < 1 for v in versions):
            raise ValueError("specific versions must be positive integers")
        return cls(latest=None, specific=tuple(sorted(set(versions))))

    @classmethod
    def every(cls) -> VersionPolicy:
        return cls(latest=None, all=True)

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest`` / ``latest:2`` / ``all`` / ``specific:1,3`` (the CLI spelling)."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                return cls.latest_n(int(arg) if arg else 1)
            if kind == "all" and not arg:
                return cls.every()
            if kind == "specific":
                return cls.only(*(int(v) for v in arg.split(",") if v.strip()))
        except ValueError as exc:
            raise ValueError(f"bad version policy {text!r}: {exc}") from exc
        raise ValueError(f"bad version policy {text!r}; use latest[:N], all or specific:V1,V2")

    def to_proto(self) -> pb.ModelVersionPolicy:
        policy = pb.ModelVersionPolicy()
        if self.all:
            policy.all.SetInParent()
        elif self.specific:
            policy.specific.versions.extend(self.specific)
        else:
            policy.latest.num_versions = self.latest or 1
        return policy

    @classmethod
    def from_proto(cls, policy: pb.ModelVersionPolicy) -> VersionPolicy:
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return cls.every()
        if which == "specific":
            return cls.only(*policy.specific.versions)
        if which == "latest":
            return cls.latest_n(policy.latest.num_versions or 1)
        return cls()  # Triton's default: latest 1

    def select(self, available: Sequence[int]) -> list[int]:
        """The versions of ``available`` this policy serves, ascending."""
        ordered = sorted(set(available))
        if self.all:
            return ordered
        if self.specific:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]


def parse_config(text: str) -> pb.ModelConfig:
    """Parse ``config.pbtxt`` text; raises :class:`RepositoryError` when it is not a valid ModelConfig."""
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"invalid config.pbtxt: {exc}") from exc


def read_config(path: str | Path) -> pb.ModelConfig:
    """Parse a ``config.pbtxt`` file."""
    path = Path(path)
    if not path.is_file():
        raise RepositoryError(f"no config.pbtxt at {path}")
    return parse_config(path.read_text())


def list_versions(repo_dir: str | Path, name: str) -> list[int]:
    """Numbered version folders of ``name`` that hold a model file, ascending."""
    model_dir = Path(repo_dir) / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / MODEL_FILENAME).is_file())


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
