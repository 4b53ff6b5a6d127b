"""Roll a new model version out on running Triton servers: publish, load beside, verify, canary or promote.

One rollout of ``model`` to version N on every server named:

1. publish N into the repository (from an ONNX file), unless N is already there;
2. load N *beside* the served version(s): a config override with a ``specific [old..., N]`` policy,
   so the old version never stops serving;
3. verify: N is READY and a smoke inference of N on Triton equals in-process onnxruntime on the same
   ``model.onnx`` (any failure restores the previous versions and raises :class:`RolloutError`);
4. canary (``canary=True``): keep both loaded and persist that policy in ``config.pbtxt`` (a restarted
   Triton loads both); services choose per replica with ``COUTURIER_<SERVICE>_MODEL_VERSIONS``;
   otherwise promote: N only (old versions drain, then unload), persisted.

Requests that name no version ("") get the highest loaded version: while both are loaded that is N,
so replicas that must stay on the old version need an explicit pin. :func:`rollback` makes an older
version (default: the one below the newest loaded) the only one served again.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tritonclient.grpc import model_config_pb2 as pb

from couturier.export.triton.control import ModelControl
from couturier.export.triton.errors import ModelControlError
from couturier.export.triton.signature import ELEMENT_TYPES
from couturier.export.triton.versions import swap_version
from couturier.services.common import models as names
from couturier.services.common.model_repository import VersionPolicy, list_versions, read_model_config

Mode = Literal["canary", "promoted", "rolled-back"]

#: Which service asks Triton for which model (used for the pinning hint printed after a canary).
SERVICES_BY_MODEL: dict[str, tuple[str, ...]] = {
    names.ITEM_ENCODER: ("scoring",),
    names.GENERATOR: ("latent",),
    names.DISCRIMINATOR: ("latent",),
    **{model: ("latent",) for model in names.GRADIENT_MODELS + names.LOOP_MODELS},
    names.RETRIEVAL_ENCODER: ("retrieval",),
    names.TEXT_ENCODER: ("retrieval",),
    names.QUERY_GENERATOR: ("retrieval",),
}

#: Element types without random smoke inputs (no numpy dtype to draw strings or bfloat16 in).
_NO_SMOKE_TYPES = ("object", "bfloat16")


class RolloutError(ModelControlError):
    """A rollout step failed; the servers were put back on the versions they served before."""


@dataclass(frozen=True)
class SmokeCheck:
    """Triton's answer for one version compared with in-process onnxruntime on one server."""

    url: str
    version: int
    outputs: tuple[str, ...]
    max_abs_diff: float


@dataclass(frozen=True)
class RolloutResult:
    """What a rollout, promotion or rollback left on the servers."""

    model: str
    version: int
    previous: tuple[int, ...]
    serving: tuple[int, ...]
    mode: Mode
    urls: tuple[str, ...]
    smoke: tuple[SmokeCheck, ...]
    seconds: float


# -- servers -------------------------------------------------------------------------------------


def resolve_urls(urls: Sequence[str]) -> list[str]:
    """Every ``address:port`` the given ``host:port`` names resolve to (order kept, no duplicates).

    A headless Kubernetes Service name resolves to one address per Triton pod, so a rollout that
    is given ``triton-pods.<ns>.svc.cluster.local:8001`` reaches every replica. IPv4 addresses are
    preferred when a name has both (``localhost``; a dual-stack pod would otherwise count twice).
    """
    resolved: list[str] = []
    for url in urls:
        host, sep, port = url.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ModelControlError(f"Triton url {url!r} is not host:port")
        host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ModelControlError(f"cannot resolve Triton host {host!r}: {exc}") from exc
        if any(info[0] == socket.AF_INET for info in infos):
            infos = [info for info in infos if info[0] == socket.AF_INET]
        for family, *_rest, sockaddr in infos:
            address = f"[{sockaddr[0]}]" if family == socket.AF_INET6 else str(sockaddr[0])
            target = f"{address}:{port}"
            if target not in resolved:
                resolved.append(target)
    if not resolved:
        raise ModelControlError("no Triton url given")
    return resolved


def _with_policy(config: pb.ModelConfig, policy: VersionPolicy) -> pb.ModelConfig:
    copy = pb.ModelConfig()
    copy.CopyFrom(config)
    copy.version_policy.CopyFrom(policy.to_proto())
    return copy


def _wait_until(control: ModelControl, model: str, ready: set[int], timeout_s: float) -> None:
    """Wait until exactly ``ready`` versions are READY and none is loading or unloading."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = control.states(model)
        now_ready = {v for v, s in states.items() if s == "READY"}
        busy = [v for v, s in states.items() if s in ("LOADING", "UNLOADING")]
        if now_ready == ready and not busy:
            return
        if time.monotonic() > deadline:
            raise ModelControlError(
                f"{model!r} is in states {states}, not only {sorted(ready)} READY, after {timeout_s:.0f} s"
            )
        time.sleep(0.05)


def load_beside(
    control: ModelControl, repo_dir: str | Path, model: str, version: int, timeout_s: float
) -> tuple[int, ...]:
    """Load ``version`` next to the versions ``control``'s server serves now; return those versions."""
    before = tuple(control.ready_versions(model))
    wanted = {*before, version}
    config = read_model_config(repo_dir, model)
    control.load(model, _with_policy(config, VersionPolicy.only(*wanted)))
    _wait_until(control, model, wanted, timeout_s)
    return before


def _restore(url: str, repo_dir: str | Path, model: str, versions: Sequence[int], timeout_s: float) -> None:
    """Put ``url`` back on ``versions`` (unload the model when there were none)."""
    with ModelControl(url, timeout_s=timeout_s) as control:
        if versions:
            config = read_model_config(repo_dir, model)
            control.load(model, _with_policy(config, VersionPolicy.only(*versions)))
            _wait_until(control, model, set(versions), timeout_s)
        else:
            control.unload(model)


# -- verification --------------------------------------------------------------------------------


def smoke_inputs(config: pb.ModelConfig, seed: int = 0, size: int = 2) -> dict[str, np.ndarray]:
    """Random inputs in the ONNX model's shapes: every dynamic axis (and the batch axis) is ``size``.

    Integer inputs take 0/1 (valid token ids and masks), floats a standard normal.
    """
    rng = np.random.default_rng(seed)
    batched = config.max_batch_size > 0
    inputs: dict[str, np.ndarray] = {}
    for tensor in config.input:
        type_name = pb.DataType.Name(tensor.data_type)
        dtype_name = ELEMENT_TYPES.get(type_name)
        if dtype_name is None or dtype_name in _NO_SMOKE_TYPES:
            raise RolloutError(f"input {tensor.name!r} has type {type_name}; give smoke inputs (--inputs FILE.npz)")
        dims = (
            []
            if tensor.HasField("reshape") and not tensor.reshape.shape
            else [d if d > 0 else size for d in tensor.dims]
        )
        shape = ([size] if batched else []) + dims
        dtype = np.dtype(dtype_name).type
        if np.issubdtype(dtype, np.floating):
            inputs[tensor.name] = rng.normal(size=shape).astype(dtype)
        elif dtype is np.bool_:
            inputs[tensor.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            inputs[tensor.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return inputs


def compare_outputs(
    served: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray], *, atol: float, rtol: float, what: str
) -> float:
    """Largest absolute difference of ``served`` and ``local``; RolloutError when they differ."""
    if set(served) != set(local):
        raise RolloutError(f"{what}: Triton returned outputs {sorted(served)}, onnxruntime {sorted(local)}")
    worst = 0.0
    for name, expected in local.items():
        got = served[name]
        if got.shape != expected.shape:
            raise RolloutError(
                f"{what}: output {name!r} has shape {got.shape} on Triton, {expected.shape} in onnxruntime"
            )
        if not np.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
            diff = float(np.nanmax(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
            raise RolloutError(
                f"{what}: output {name!r} differs from onnxruntime by up to {diff:.3g} (atol {atol}, rtol {rtol})"
            )
        if got.size:
            worst = max(worst, float(np.nanmax(np.abs(got.astype(np.float64) - expected.astype(np.float64)))))
    return worst


def smoke_check(
    url: str,
    repo_dir: str | Path,
    model: str,
    version: int,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    timeout_s: float = 30.0,
) -> SmokeCheck:
    """Run ``version`` of ``model`` on Triton at ``url`` and in-process; RolloutError unless equal."""
    from couturier.services.common.inference import InferenceError, OnnxRuntimeBackend, TritonBackend

    feed = dict(inputs) if inputs is not None else smoke_inputs(read_model_config(repo_dir, model))

    async def both() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        triton, local = TritonBackend(url, timeout_s=timeout_s), OnnxRuntimeBackend(repo_dir, max_workers=1)
        try:
            served = await triton.infer(model, feed, version=str(version))
            expected = await local.infer(model, feed, version=str(version))
        finally:
            await triton.close()
            await local.close()
        return served, expected

    what = f"{model!r} version {version} on {url}"
    try:
        served, expected = asyncio.run(both())
    except InferenceError as exc:
        raise RolloutError(f"{what}: smoke inference failed: {exc}") from exc
    diff = compare_outputs(served, expected, atol=atol, rtol=rtol, what=what)
    return SmokeCheck(url, version, tuple(sorted(expected)), diff)


# -- steps ---------------------------------------------------------------------------------------


def rollout(
    urls: Sequence[str],
    repo_dir: str | Path,
    model: str,
    *,
    onnx_path: str | Path | None = None,
    version: int | None = None,
    canary: bool = False,
    inputs: Mapping[str, np.ndarray] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    timeout_s: float = 120.0,
    resolve: bool = True,
    **publish: Any,
) -> RolloutResult:
    """Publish (``onnx_path``) or take (``version``) a version, load it beside the served one, verify
    it on every server, then keep both (``canary``) or promote it. See the module docstring."""
    from couturier.export.triton.repository import publish_model, write_model_config

    started = time.monotonic()
    if (onnx_path is None) == (version is None):
        raise ModelControlError("give exactly one of an ONNX file to publish or an already published version")
    if onnx_path is not None:
        version = publish_model(repo_dir, model, onnx_path, **publish).version
    assert version is not None
    if version not in list_versions(repo_dir, model):
        raise ModelControlError(f"{model!r} has no version {version} in {repo_dir}; publish it first")
    servers = resolve_urls(urls) if resolve else list(urls)
    touched: dict[str, tuple[int, ...]] = {}
    checks: list[SmokeCheck] = []
    try:
        for url in servers:
            with ModelControl(url, timeout_s=timeout_s) as control:
                touched[url] = tuple(control.ready_versions(model))  # restored even when the load fails
                load_beside(control, repo_dir, model, version, timeout_s)
            checks.append(smoke_check(url, repo_dir, model, version, inputs=inputs, atol=atol, rtol=rtol))
    except Exception as exc:
        for url, before in touched.items():
            try:
                _restore(url, repo_dir, model, before, timeout_s)
            except Exception as undo:
                exc.add_note(f"restoring {url} to {list(before)} also failed: {undo}")
        if isinstance(exc, RolloutError):
            raise
        raise RolloutError(f"rollout of {model!r} version {version} failed and was undone: {exc}") from exc
    previous = tuple(sorted({v for before in touched.values() for v in before if v != version}))
    mode: Mode
    if canary:
        config = read_model_config(repo_dir, model)
        write_model_config(repo_dir, model, _with_policy(config, VersionPolicy.only(*previous, version)))
        serving, mode = (*previous, version), "canary"
    else:
        for url in servers:
            swap_version(url, repo_dir, model, version, timeout_s=timeout_s)
        serving, mode = (version,), "promoted"
    return RolloutResult(
        model,
        version,
        previous,
        tuple(sorted(serving)),
        mode,
        tuple(servers),
        tuple(checks),
        time.monotonic() - started,
    )


def promote(
    urls: Sequence[str],
    repo_dir: str | Path,
    model: str,
    version: int | None = None,
    *,
    timeout_s: float = 120.0,
    resolve: bool = True,
) -> RolloutResult:
    """End a canary: serve only ``version`` (default: the newest version the config serves)."""
    return _serve_only(urls, repo_dir, model, version, "promoted", timeout_s, resolve)


def rollback(
    urls: Sequence[str],
    repo_dir: str | Path,
    model: str,
    to_version: int | None = None,
    *,
    timeout_s: float = 120.0,
    resolve: bool = True,
) -> RolloutResult:
    """Serve only ``to_version`` again (default: the newest published version below the newest loaded).

    Works after a promotion (the old version is loaded again, then the new one drains and unloads)
    and during a canary (the new version is unloaded).
    """
    return _serve_only(urls, repo_dir, model, to_version, "rolled-back", timeout_s, resolve)


def _serve_only(
    urls: Sequence[str],
    repo_dir: str | Path,
    model: str,
    version: int | None,
    mode: Mode,
    timeout_s: float,
    resolve: bool,
) -> RolloutResult:
    started = time.monotonic()
    servers = resolve_urls(urls) if resolve else list(urls)
    with ModelControl(servers[0], timeout_s=timeout_s) as control:
        loaded = control.ready_versions(model)
    if version is None:
        if mode == "promoted":
            policy = VersionPolicy.from_proto(read_model_config(repo_dir, model).version_policy)
            candidates = policy.select(list_versions(repo_dir, model))
        else:
            newest = max(loaded) if loaded else max(list_versions(repo_dir, model), default=0)
            candidates = [v for v in list_versions(repo_dir, model) if v < newest]
        if not candidates:
            raise ModelControlError(f"no version of {model!r} to {'promote' if mode == 'promoted' else 'roll back to'}")
        version = candidates[-1]
    for url in servers:
        swap_version(url, repo_dir, model, version, timeout_s=timeout_s)
    previous = tuple(v for v in loaded if v != version)
    return RolloutResult(model, version, previous, (version,), mode, tuple(servers), (), time.monotonic() - started)


def pinning_hint(result: RolloutResult) -> str:
    """How to split service replicas between the versions a canary left loaded."""
    services = SERVICES_BY_MODEL.get(result.model, ("<service>",))
    old = result.previous[-1] if result.previous else None
    lines = [
        f"canary: {result.model} versions {list(result.serving)} loaded on {len(result.urls)} server(s); "
        f"requests that name no version now get version {max(result.serving)} (the highest loaded).",
    ]
    for service in services:
        env = f"COUTURIER_{service.upper()}_MODEL_VERSIONS"
        if old is not None:
            lines.append(f'  stable {service} replicas: {env}=\'{{"{result.model}": "{old}"}}\'')
        lines.append(
            f'  canary {service} replicas: {env}=\'{{"{result.model}": "{result.version}"}}\'  (k8s/components/canary)'
        )
    partner = {**names.LOOP_GRADIENT, **{g: loop for loop, g in names.LOOP_GRADIENT.items()}}.get(result.model)
    if partner is not None:
        lines.append(
            f"  the latent service (optimiser=loop) refuses a pin of {result.model} without one of {partner}: "
            f"roll out {partner} from the same export and pin both"
        )
    lines.append(
        f"then: couturier triton promote {result.model} {result.version}  "
        f"or  couturier triton rollback {result.model}" + (f" --to {old}" if old is not None else "")
    )
    return "\n".join(lines)
