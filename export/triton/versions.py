"""Swap the served version of a model on a running Triton without a restart and without failed requests.

Steps: load the target next to the served version(s) (a config override with a ``specific`` policy:
old versions keep serving while the target loads), then load again with only the target (Triton
drains in-flight requests of the old version before unloading it), then persist that policy in
``config.pbtxt`` so a restart serves the same version. New weights always go in a new numbered
version folder: Triton skips a load of unchanged files, and reloads in place cost downtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as pb

from couturier.export.triton.control import ModelControl
from couturier.export.triton.errors import ModelControlError
from couturier.services.common.model_repository import VersionPolicy, list_versions, read_model_config


@dataclass(frozen=True)
class SwapResult:
    """What a swap changed."""

    model: str
    previous: tuple[int, ...]
    current: int
    seconds: float


def _with_policy(config: pb.ModelConfig, policy: VersionPolicy) -> pb.ModelConfig:
    copy = pb.ModelConfig()
    copy.CopyFrom(config)
    copy.version_policy.CopyFrom(policy.to_proto())
    return copy


def _settled(states: dict[int, str], version: int) -> bool:
    """Only ``version`` is READY and no other version is still loading or unloading."""
    return states.get(version) == "READY" and all(
        state not in ("READY", "LOADING", "UNLOADING") for v, state in states.items() if v != version
    )


def swap_version(url: str, repo_dir: str | Path, model: str, version: int, *, timeout_s: float = 120.0) -> SwapResult:
    """Make ``version`` (already in ``repo_dir``) the only served version of ``model`` on Triton at ``url``."""
    from couturier.export.triton.repository import write_model_config  # onnx import only here

    started = time.monotonic()
    if version not in list_versions(repo_dir, model):
        raise ModelControlError(f"{model!r} has no version {version} in {repo_dir}; publish it first")
    config = read_model_config(repo_dir, model)
    with ModelControl(url, timeout_s=timeout_s) as control:
        before = control.ready_versions(model)
        if before != [version]:
            if before:  # serve both while the target loads: no gap
                control.load(model, _with_policy(config, VersionPolicy.only(*before, version)))
                if version not in control.ready_versions(model):
                    raise ModelControlError(f"{model!r} version {version} did not become ready; still serving {before}")
            final = _with_policy(config, VersionPolicy.only(version))
            control.load(model, final)
            # Return once the old versions are fully unloaded: while one is UNLOADING, Triton's
            # (strict) server readiness reads false, which would flap readiness probes.
            deadline = time.monotonic() + timeout_s
            while not _settled(control.states(model), version):
                if time.monotonic() > deadline:
                    raise ModelControlError(
                        f"{model!r} is in states {control.states(model)} {timeout_s:.0f} s after the swap to {version}"
                    )
                time.sleep(0.05)
    write_model_config(repo_dir, model, _with_policy(config, VersionPolicy.only(version)))
    return SwapResult(model, tuple(before), version, time.monotonic() - started)


def publish_and_swap(
    url: str, repo_dir: str | Path, model: str, onnx_path: str | Path, *, timeout_s: float = 120.0, **publish: Any
) -> SwapResult:
    """Publish ``onnx_path`` as the next version of ``model`` and swap the running server to it."""
    from couturier.export.triton.repository import publish_model

    published = publish_model(repo_dir, model, onnx_path, **publish)
    return swap_version(url, repo_dir, model, published.version, timeout_s=timeout_s)
