"""Write a Triton model repository: ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/<N>/model.onnx``.

The config is generated from the ONNX signature (one source of truth) with standard fields only,
so NGC Triton's native onnxruntime backend serves the same folder on GPU. The ONNX metadata the
services need (``PUBLISHED_KEYS`` of :mod:`couturier.services.common.model_metadata`, e.g. the category
list) is copied into the config's ``parameters``, where Triton shows it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
from tritonclient.grpc import model_config_pb2 as pb

from couturier.export.triton.errors import RepositoryError
from couturier.export.triton.model_config import (
    BACKEND,
    INTRA_OP_THREADS,
    InstanceKind,
    ServingOptions,
    build_model_config,
    config_signature,
    is_batched,
    render_config,
)
from couturier.export.triton.signature import ModelSignature, read_signature
from couturier.services.common.model_metadata import METADATA_PREFIX, PUBLISHED_KEYS
from couturier.services.common.model_repository import (
    CONFIG_FILENAME,
    MODEL_FILENAME,
    VersionPolicy,
    list_versions,
    read_config,
    read_model_config,
    served_versions,
)

__all__ = [
    "MODEL_FILENAME",
    "ModelSignature",
    "PublishedModel",
    "list_versions",
    "publish_model",
    "read_model_config",
    "read_signature",
    "retire_model",
    "served_versions",
    "serving_options",
    "write_model_config",
]


@dataclass(frozen=True)
class PublishedModel:
    """Where a published version lives and the config that serves it."""

    name: str
    version: int
    model_dir: Path
    onnx_path: Path
    config_path: Path
    signature: ModelSignature
    config: pb.ModelConfig


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or name.startswith(".") or name.isdigit():
        raise RepositoryError(f"invalid model name {name!r}: use a plain folder name that is not a number")


def serving_options(config: pb.ModelConfig) -> ServingOptions:
    """The :class:`ServingOptions` an existing config was written with."""
    group = config.instance_group[0] if config.instance_group else None
    batched = is_batched(config)
    batching = config.HasField("dynamic_batching")
    return ServingOptions(
        batched=batched,
        # an unbatched config keeps the defaults for the batching fields it does not write
        max_batch_size=config.max_batch_size if batched else ServingOptions.max_batch_size,
        dynamic_batching=batching if batched else ServingOptions.dynamic_batching,
        instance_kind=pb.ModelInstanceGroup.Kind.Name(group.kind) if group else "KIND_CPU",
        instance_count=(group.count or 1) if group else 1,
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
        max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds if batching else 500,
        version_policy=VersionPolicy.from_proto(config.version_policy),
        parameters={k: v.string_value for k, v in config.parameters.items()},
    )


def retire_model(repo_dir: str | Path, name: str) -> tuple[Path, int]:
    """Move ``<repo>/<name>`` (config and every version) out of the repository, for a model whose
    signature changed; returns (where it went, its newest version number).

    It goes to ``<repo>-retired/<name>-<UTC time>/`` next to the repository, not inside it: a Triton
    that loads every folder of its repository (``--model-control-mode=none``) would fail on it.
    Publish the new signature as version ``newest + 1`` so one number never names two signatures.
    """
    _check_name(name)
    repo = Path(repo_dir).absolute()
    model_dir = repo / name
    if not model_dir.is_dir():
        raise RepositoryError(f"model {name!r} is not in {repo}")
    newest = max(list_versions(repo, name), default=0)
    target = repo.parent / f"{repo.name}-retired" / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    suffix = 1
    while target.exists():
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
        suffix += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(model_dir), str(target))
    return target, newest


def write_model_config(repo_dir: str | Path, name: str, config: pb.ModelConfig) -> Path:
    """Atomically (re)write ``<repo>/<name>/config.pbtxt``."""
    path = Path(repo_dir) / name / CONFIG_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CONFIG_FILENAME}.tmp")
    tmp.write_text(render_config(config))
    os.replace(tmp, path)
    return path


def _external_files(onnx_path: Path) -> list[str]:
    """Relative paths of the external-data files an ONNX model references."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    files: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(files)


def _published_parameters(
    src: Path, name: str, repo: Path, parameters: Mapping[str, str], existing: pb.ModelConfig | None
) -> dict[str, str]:
    """``parameters`` with the ONNX file's ``PUBLISHED_KEYS`` metadata as ``couturier.<key>`` entries.

    These keys describe the model's inputs (what each category one-hot position means), so every
    version of one model must agree on them, like on the signature: a value that differs from the
    config's is refused. A config without them (versions exported before they existed) takes them.
    """
    model = onnx.load(str(src), load_external_data=False)
    metadata = {p.key: p.value for p in model.metadata_props}
    out = {k: v for k, v in parameters.items() if not k.startswith(METADATA_PREFIX)}
    for key in PUBLISHED_KEYS:
        entry = METADATA_PREFIX + key
        value = metadata.get(entry)
        if existing is not None and entry in existing.parameters and existing.parameters[entry].string_value != value:
            raise RepositoryError(
                f"{src} has {entry} = {value if value is not None else 'nothing'} but model {name!r} in {repo} "
                f"serves versions with {existing.parameters[entry].string_value}: models trained on other data go "
                "into a new model repository (couturier export --repo DIR) or under a new model name"
            )
        if value is not None:
            out[entry] = value
    return out


def publish_model(
    repo_dir: str | Path,
    name: str,
    onnx_path: str | Path,
    *,
    version: int | None = None,
    kind: InstanceKind | None = None,
    max_batch_size: int | None = None,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int | None = None,
    instance_count: int | None = None,
    dynamic_batching: bool | None = None,
    version_policy: VersionPolicy | str | None = None,
    parameters: Mapping[str, str] | None = None,
    batched: bool | None = None,
    intra_op_threads: int | None = None,
) -> PublishedModel:
    """Copy ``onnx_path`` in as version ``version`` (default: next number) and (re)write the config.

    Options left as None keep the existing config's values (or the defaults for a new model). A
    new version must have the same inputs/outputs as the config; publish a changed signature under
    a new model name. Version folders appear atomically and are never overwritten.

    ``batched`` (default True for a new model): dim 0 of every tensor is Triton's batch axis and
    requests are dynamically batched. ``batched=False`` serves the model unbatched
    (``max_batch_size: 0``, full shapes with -1 for dynamic axes, no ``dynamic_batching``) for models
    whose inputs do not share dim 0, e.g. ``z (B, D)`` with ``theta (U, D)``; the batching options
    are then not written. The batching mode of an existing model cannot change.

    ``instance_count``: model instances (each runs requests on its own; Triton's ``instance_group``).
    ``intra_op_threads``: onnxruntime threads per instance (the ``intra_op_thread_count`` parameter,
    read by NGC Triton's onnxruntime backend and couturier's local one; 0 = onnxruntime's default,
    one per core), merged into ``parameters``. On CPU keep ``instance_count * intra_op_threads`` at
    the cores the server may use.
    """
    _check_name(name)
    src = Path(onnx_path)
    repo = Path(repo_dir)
    model_dir = repo / name
    config_path = model_dir / CONFIG_FILENAME
    existing = read_config(config_path) if config_path.exists() else None
    if existing is not None and batched is not None and batched != is_batched(existing):
        raise RepositoryError(
            f"model {name!r} in {repo} is served {'batched' if is_batched(existing) else 'unbatched'}; "
            f"it cannot be republished with batched={batched}. Publish under a new model name."
        )
    if batched is None:
        batched = is_batched(existing) if existing is not None else True
    signature = read_signature(src, batched=batched)
    if existing is not None:
        if existing.backend != BACKEND:
            raise RepositoryError(f"{config_path} uses backend {existing.backend!r}, not {BACKEND!r}")
        inputs, outputs = config_signature(existing)
        if (inputs, outputs) != (signature.inputs, signature.outputs):
            raise RepositoryError(
                f"{src} has a different signature than model {name!r} in {repo}: "
                f"config {inputs} -> {outputs}, ONNX {signature.inputs} -> {signature.outputs}. "
                "Publish a changed signature under a new model name."
            )
    if isinstance(version_policy, str):
        version_policy = VersionPolicy.parse(version_policy)
    given: dict[str, Any] = {
        "instance_kind": kind,
        "max_batch_size": max_batch_size,
        "preferred_batch_sizes": tuple(preferred_batch_sizes) if preferred_batch_sizes is not None else None,
        "max_queue_delay_us": max_queue_delay_us,
        "instance_count": instance_count,
        "dynamic_batching": dynamic_batching,
        "version_policy": version_policy,
        "parameters": dict(parameters) if parameters is not None else None,
        "batched": batched,
    }
    base = serving_options(existing) if existing is not None else ServingOptions()
    options = replace(base, **{k: v for k, v in given.items() if v is not None})
    if intra_op_threads is not None:
        if intra_op_threads < 0:
            raise RepositoryError(f"intra_op_threads must be >= 0 (0: onnxruntime's default), not {intra_op_threads}")
        options = replace(options, parameters={**options.parameters, INTRA_OP_THREADS: str(intra_op_threads)})
    options = replace(options, parameters=_published_parameters(src, name, repo, options.parameters, existing))
    config = build_model_config(name, signature, options)

    versions = list_versions(repo, name)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    if version < 1:
        raise RepositoryError(f"version must be a positive integer, not {version}")
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise RepositoryError(f"{version_dir} already exists; versions are immutable, publish a new number")

    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        shutil.copyfile(src, staging / MODEL_FILENAME)
        for rel in _external_files(src):
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.parent / rel, target)
        staging.chmod(0o755)
        os.rename(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_model_config(repo, name, config)
    return PublishedModel(
        name=name,
        version=version,
        model_dir=model_dir,
        onnx_path=version_dir / MODEL_FILENAME,
        config_path=config_path,
        signature=signature,
        config=config,
    )
