"""Model inference behind one interface: a Triton server over gRPC, or onnxruntime in-process.

Both serve the same model repository (``<repo>/<model>/config.pbtxt`` + ``<N>/model.onnx``), so a
service switches between them by configuration. Errors become the domain exceptions below. Both
resolve model versions through one :class:`VersionCache` (``model_version_cache_s``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import grpc
import numpy as np

from couturier.services.common.downstream import reconnect_options
from couturier.services.common.errors import (
    CouturierError,
    DeadlineExpired,
    DependencyFailed,
    DependencyUnavailable,
    InvalidInput,
    PreconditionFailed,
    ResourceExhausted,
    clip,
)
from couturier.services.common.logs import get_logger
from couturier.services.common.model_metadata import METADATA_PREFIX
from couturier.services.common.security import channel_credentials

if TYPE_CHECKING:
    import onnxruntime

log = get_logger(__name__)


class InferenceError(CouturierError):
    """Inference failed for a reason not covered by the subclasses."""


class BackendUnavailable(InferenceError, DependencyUnavailable):
    """The inference backend cannot be reached (Triton down, connection refused)."""


class ModelNotReady(InferenceError, DependencyUnavailable):
    """The model (or the asked version) is unknown, not loaded, or loading."""


class BadInferenceInput(InferenceError, InvalidInput):
    """Inputs do not match the model: names, element types or shapes."""


class InferenceTimeout(InferenceError, DeadlineExpired):
    """The backend did not answer within the per-call timeout."""


class BackendOverloaded(InferenceError, ResourceExhausted):
    """The backend is out of a resource (memory, a message size limit): RESOURCE_EXHAUSTED."""


class BackendRefused(InferenceError, PreconditionFailed):
    """The backend refuses the call as deployed (an API it does not serve, credentials it does not take)."""


class BackendFailed(InferenceError, DependencyFailed):
    """The backend failed for a reason none of the others describe (INTERNAL, with an error id logged)."""


@runtime_checkable
class InferenceBackend(Protocol):
    """What services call to run a model."""

    name: str

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None,
        version: str = "",
    ) -> dict[str, np.ndarray]:
        """Run ``model`` (``version`` "" = the served one); return the asked outputs (default all)."""
        ...

    async def is_ready(self, model: str) -> bool:
        """True when ``model`` can serve now."""
        ...

    async def resolve_version(self, model: str, pinned: str = "", *, fresh: bool = False) -> str:
        """The version a call should name: ``pinned`` when it is ready, else the newest ready one.

        Services resolve once per request and pass the result to every ``infer`` of that request, so
        one answer never mixes versions and the version it reports is the one that ran. Answers are
        reused for the backend's version cache time (:class:`VersionCache`); ``fresh=True`` asks the
        backend anyway and refreshes the cache (health probes do).
        """
        ...

    async def input_shapes(self, model: str, version: str = "") -> dict[str, tuple[int, ...]]:
        """Input name -> full ONNX shape (-1 for a dynamic axis)."""
        ...

    async def output_shapes(self, model: str, version: str = "") -> dict[str, tuple[int, ...]]:
        """Output name -> full ONNX shape (-1 for a dynamic axis), from the model's metadata."""
        ...

    async def model_metadata(self, model: str, version: str = "") -> dict[str, str]:
        """The model's ``couturier.*`` metadata, prefix stripped (:mod:`~couturier.services.common.model_metadata`).

        In-process: the ONNX file's ``metadata_props``. Triton: the ``parameters`` of the model's
        config, where publishing copies the keys the services need (Triton shows no ONNX metadata).
        """
        ...

    async def close(self) -> None:
        """Release connections, sessions and threads."""
        ...


# -- resolved versions -------------------------------------------------------------------------


class VersionCache:
    """Resolved model versions, reused for ``ttl_s`` seconds: the one cache of both backends.

    Resolving a version costs one or two Triton round trips (or file checks in-process) and every
    request resolves its models, so answers are kept per ``(model, pinned)`` for a short time: a
    newly loaded version is picked up at most ``ttl_s`` later. ``ttl_s`` 0 disables the cache. A
    failed lookup is never kept (and drops the entry), and a backend forgets a model whose named
    version stopped serving (:meth:`forget`), so the next request asks again. ``clock`` (seconds,
    monotonic) is injectable for tests.
    """

    def __init__(self, ttl_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}

    async def resolve(
        self, model: str, pinned: str, lookup: Callable[[str, str], Awaitable[str]], *, fresh: bool = False
    ) -> str:
        """The cached version of ``(model, pinned)`` while it is younger than ``ttl_s``, else ``lookup``'s."""
        key = (model, pinned)
        if self.ttl_s > 0 and not fresh:
            hit = self._entries.get(key)
            if hit is not None and self._clock() < hit[1]:
                return hit[0]
        try:
            version = await lookup(model, pinned)
        except BaseException:
            self._entries.pop(key, None)
            raise
        if self.ttl_s > 0:
            self._entries[key] = (version, self._clock() + self.ttl_s)
        return version

    def forget(self, model: str) -> None:
        """Drop every cached version of ``model`` (one of them stopped serving)."""
        for key in [k for k in self._entries if k[0] == model]:
            del self._entries[key]


def _couturier_keys(metadata: Mapping[str, str]) -> dict[str, str]:
    """The ``couturier.*`` entries of ``metadata``, prefix stripped."""
    return {k[len(METADATA_PREFIX) :]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}


# -- Triton ------------------------------------------------------------------------------------


def _map_triton_error(exc: Exception, model: str, url: str) -> InferenceError:
    """The domain error of a tritonclient exception, by its gRPC status (and message where Triton has none)."""
    status = str(getattr(exc, "status", lambda: None)() or "")
    message = clip(str(getattr(exc, "message", lambda: str(exc))() or exc), 500)
    lowered = message.lower()
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in lowered:
        return InferenceTimeout(f"Triton at {url} did not answer for model {model!r} in time")
    if "RESOURCE_EXHAUSTED" in status or "out of memory" in lowered or "larger than max" in lowered:
        return BackendOverloaded(f"Triton at {url} is out of resources for model {model!r}: {message}")
    if "unknown model" in lowered or "not ready" in lowered or "not found" in lowered or "NOT_FOUND" in status:
        return ModelNotReady(f"model {model!r} is not ready on Triton at {url}: {message}")
    if any(code in status for code in ("UNAVAILABLE", "CANCELLED", "ABORTED")) or (
        not status and any(s in lowered for s in ("failed to connect", "connection refused", "socket closed"))
    ):
        return BackendUnavailable(f"Triton at {url} is unavailable: {message}")
    if "INVALID_ARGUMENT" in status or "OUT_OF_RANGE" in status:
        return BadInferenceInput(f"model {model!r} rejected the inputs: {message}")
    if any(c in status for c in ("UNIMPLEMENTED", "PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION")):
        return BackendRefused(f"Triton at {url} refused the call for model {model!r} ({status}): {message}")
    return BackendFailed(f"Triton inference of {model!r} failed ({status or 'error'}): {message}")


class TritonBackend:
    """Triton over gRPC (``tritonclient.grpc.aio``); ``url`` like ``127.0.0.1:8001``.

    ``version_cache_s``: how long a resolved version is reused (:class:`VersionCache`; 0: never).
    ``reconnect``: the channel's reconnect arguments (:func:`~couturier.services.common.downstream.reconnect_options`,
    default its defaults), so calls succeed again within about half a second of Triton's return.
    ``credentials``: TLS to Triton (tritonclient's ``creds``; None: plaintext)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        version_cache_s: float = 0.0,
        reconnect: list[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.reconnect = reconnect_options() if reconnect is None else list(reconnect)
        self.credentials = credentials  # TLS to Triton (security.channel_credentials); None: plaintext
        self.name = f"triton:{url}"
        self.version_cache = VersionCache(version_cache_s)
        self._client: Any = None
        # model -> {tensor name: model-side inner shape} for tensors the config reshapes ([batch] ones
        # of a batched model); empty for an unbatched model (max_batch_size 0: full shapes travel as is)
        self._reshapes: dict[str, dict[str, tuple[int, ...]]] = {}

    def _get_client(self) -> Any:
        # Created lazily: a grpc.aio channel belongs to the event loop that is running now.
        if self._client is None:
            from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
            from tritonclient.grpc.aio import InferenceServerClient

            # channel_args replaces tritonclient's own arguments: keep them (message size, keepalive)
            keepalive = KeepAliveOptions()
            self._client = InferenceServerClient(
                self.url,
                creds=self.credentials,
                channel_args=[
                    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
                    ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                    ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                    ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                    ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                    *self.reconnect,
                ],
            )
        return self._client

    async def _reshaped(self, model: str, version: str) -> dict[str, tuple[int, ...]]:
        """Config ``reshape`` of a batched model's tensors (a ``[batch]`` tensor is served as ``[batch, 1]``)."""
        from tritonclient.utils import InferenceServerException

        if model not in self._reshapes:
            try:
                response = await self._get_client().get_model_config(
                    model, model_version=version, client_timeout=self.timeout_s
                )
            except InferenceServerException as exc:
                raise _map_triton_error(exc, model, self.url) from exc
            config = response.config
            self._reshapes[model] = (
                {t.name: tuple(t.reshape.shape) for t in [*config.input, *config.output] if t.HasField("reshape")}
                if config.max_batch_size > 0
                else {}  # unbatched: inputs and outputs have the ONNX shapes already
            )
        return self._reshapes[model]

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None,
        version: str = "",
    ) -> dict[str, np.ndarray]:
        """Inputs and outputs have the ONNX model's shapes (Triton's ``reshape`` is undone here).

        Works for batched and unbatched (``max_batch_size: 0``) models alike.
        """
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        reshapes = await self._reshaped(model, version)
        requests = []
        for key, value in inputs.items():
            array = np.ascontiguousarray(value)
            if reshapes.get(key) == () and array.ndim == 1:  # a [batch] input travels as [batch, 1]
                array = array.reshape(-1, 1)
            dtype = np_to_triton_dtype(array.dtype)
            if dtype is None:
                raise BadInferenceInput(f"input {key!r} has element type {array.dtype}, which Triton cannot take")
            tensor = InferInput(key, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            requests.append(tensor)
        wanted = [InferRequestedOutput(n) for n in outputs] if outputs else None
        try:
            result = await self._get_client().infer(
                model, requests, model_version=version, outputs=wanted, client_timeout=self.timeout_s
            )
        except InferenceServerException as exc:
            error = _map_triton_error(exc, model, self.url)
            if isinstance(error, ModelNotReady):
                self._reshapes.pop(model, None)
                self.version_cache.forget(model)
            raise error from exc
        names = outputs or [o.name for o in result.get_response().outputs]
        arrays = {n: result.as_numpy(n) for n in names}
        for n, inner in reshapes.items():
            if n in arrays:
                arrays[n] = arrays[n].reshape(arrays[n].shape[0], *inner)
        return arrays

    async def is_ready(self, model: str) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(await self._get_client().is_model_ready(model, client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    async def _metadata(self, model: str, version: str) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return await self._get_client().get_model_metadata(
                model, model_version=version, client_timeout=self.timeout_s
            )
        except InferenceServerException as exc:
            raise _map_triton_error(exc, model, self.url) from exc

    async def _version_ready(self, model: str, version: str) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(await self._get_client().is_model_ready(model, version, client_timeout=self.timeout_s))
        except InferenceServerException as exc:
            raise _map_triton_error(exc, model, self.url) from exc

    async def resolve_version(self, model: str, pinned: str = "", *, fresh: bool = False) -> str:
        return await self.version_cache.resolve(model, pinned, self._lookup_version, fresh=fresh)

    async def _lookup_version(self, model: str, pinned: str) -> str:
        if pinned:
            if not await self._version_ready(model, pinned):
                raise ModelNotReady(f"pinned version {pinned} of {model!r} is not loaded on Triton at {self.url}")
            return pinned
        metadata = await self._metadata(model, "")
        versions = sorted((int(v) for v in metadata.versions if v.isdigit()), reverse=True)
        for version in versions:  # newest first; a version being unloaded is skipped
            if await self._version_ready(model, str(version)):
                return str(version)
        raise ModelNotReady(f"model {model!r} has no ready version on Triton at {self.url}")

    async def _shapes(
        self, model: str, version: str, which: Literal["inputs", "outputs"]
    ) -> dict[str, tuple[int, ...]]:
        metadata = await self._metadata(model, version)
        reshapes = await self._reshaped(model, version)
        shapes = {}
        for tensor in getattr(metadata, which):
            shape = tuple(int(d) for d in tensor.shape)
            if tensor.name in reshapes:  # batched: Triton shows [-1, *config dims]; the model sees the reshape
                shape = (shape[0], *reshapes[tensor.name])
            shapes[tensor.name] = shape
        return shapes

    async def input_shapes(self, model: str, version: str = "") -> dict[str, tuple[int, ...]]:
        return await self._shapes(model, version, "inputs")

    async def model_metadata(self, model: str, version: str = "") -> dict[str, str]:
        from tritonclient.utils import InferenceServerException

        try:
            response = await self._get_client().get_model_config(
                model, model_version=version, client_timeout=self.timeout_s
            )
        except InferenceServerException as exc:
            raise _map_triton_error(exc, model, self.url) from exc
        return _couturier_keys({k: v.string_value for k, v in response.config.parameters.items()})

    async def output_shapes(self, model: str, version: str = "") -> dict[str, tuple[int, ...]]:
        return await self._shapes(model, version, "outputs")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


# -- onnxruntime in-process --------------------------------------------------------------------

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxRuntimeBackend:
    """onnxruntime in-process over a Triton model repository; runs on worker threads.

    Version "" is the newest version the model's ``config.pbtxt`` policy serves (re-read when the
    repository changes). Sessions are cached per (model, version). ``version_cache_s``: how long a
    resolved version is reused (:class:`VersionCache`; 0: never).
    """

    def __init__(
        self,
        repo_dir: str | Path,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        max_workers: int = 2,
        version_cache_s: float = 0.0,
    ) -> None:
        self.repo_dir = Path(repo_dir)
        self.version_cache = VersionCache(version_cache_s)
        self.providers = providers or ["CPUExecutionProvider"]
        self.intra_op_threads = intra_op_threads
        self.name = f"onnxruntime:{self.repo_dir}"
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="onnxruntime")
        self._sessions: dict[tuple[str, int], onnxruntime.InferenceSession] = {}
        self._served: dict[str, tuple[tuple[int, int], int]] = {}
        self._lock = threading.Lock()

    def _served_version(self, model: str) -> int:
        from couturier.services.common.model_repository import CONFIG_FILENAME, served_versions

        model_dir = self.repo_dir / model
        try:
            stamp = (model_dir.stat().st_mtime_ns, (model_dir / CONFIG_FILENAME).stat().st_mtime_ns)
        except FileNotFoundError:
            raise ModelNotReady(f"model {model!r} is not in the repository {self.repo_dir}") from None
        cached = self._served.get(model)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            versions = served_versions(self.repo_dir, model)
        except Exception as exc:
            raise ModelNotReady(f"model {model!r} in {self.repo_dir} cannot be read: {exc}") from exc
        if not versions:
            raise ModelNotReady(f"model {model!r} in {self.repo_dir} has no version its config serves")
        self._served[model] = (stamp, versions[-1])
        return versions[-1]

    def _session(self, model: str, version: str) -> onnxruntime.InferenceSession:
        import onnxruntime

        from couturier.services.common.model_repository import model_path

        if version:
            if not version.isdigit():
                raise ModelNotReady(f"version {version!r} of {model!r} is not a version number")
            number = int(version)
        else:
            number = self._served_version(model)
        key = (model, number)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                path = model_path(self.repo_dir, model, number)
                if not path.is_file():
                    raise ModelNotReady(f"model {model!r} has no version {number} in {self.repo_dir}")
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self.intra_op_threads
                session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=self.providers)
                if not version:  # the served version moved on: drop sessions of older served versions
                    for stale in [k for k in self._sessions if k[0] == model and k[1] < number]:
                        del self._sessions[stale]
                self._sessions[key] = session
                log.info("onnxruntime session opened", model=model, version=number, provider=session.get_providers()[0])
            return session

    def _run(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str] | None, version: str
    ) -> dict[str, np.ndarray]:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

        session = self._session(model, version)
        expected = {i.name: i for i in session.get_inputs()}
        if set(inputs) != set(expected):
            raise BadInferenceInput(f"model {model!r} takes inputs {sorted(expected)}, got {sorted(inputs)}")
        feed = {}
        for key, value in inputs.items():
            array = np.asarray(value)
            want = _ORT_TYPES.get(expected[key].type)
            if want is not None and array.dtype != want:
                raise BadInferenceInput(f"input {key!r} of {model!r} must be {np.dtype(want)}, got {array.dtype}")
            feed[key] = array
        names = outputs or [o.name for o in session.get_outputs()]
        unknown = set(names) - {o.name for o in session.get_outputs()}
        if unknown:
            raise BadInferenceInput(f"model {model!r} has no outputs {sorted(unknown)}")
        try:
            return dict(zip(names, session.run(names, feed)))
        except (InvalidArgument, Fail) as exc:
            raise BadInferenceInput(f"model {model!r} rejected the inputs: {exc}") from exc

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None,
        version: str = "",
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._run, model, inputs, outputs, version)
        except ModelNotReady:
            self.version_cache.forget(model)
            raise

    async def is_ready(self, model: str) -> bool:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._session, model, "")
        except InferenceError:
            return False
        return True

    async def resolve_version(self, model: str, pinned: str = "", *, fresh: bool = False) -> str:
        return await self.version_cache.resolve(model, pinned, self._lookup_version, fresh=fresh)

    async def _lookup_version(self, model: str, pinned: str) -> str:
        loop = asyncio.get_running_loop()
        if pinned:
            await loop.run_in_executor(self._executor, self._session, model, pinned)
            return pinned
        return str(await loop.run_in_executor(self._executor, self._served_version, model))

    async def input_shapes(self, model: str, version: str = "") -> dict[str, tuple[int, ...]]:
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self._executor, self._session, model, version)
        return {i.name: tuple(d if isinstance(d, int) else -1 for d in i.shape) for i in session.get_inputs()}

    async def output_shapes(self, model: str, version: str = "") -> dict[str, tuple[int, ...]]:
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self._executor, self._session, model, version)
        return {o.name: tuple(d if isinstance(d, int) else -1 for d in o.shape) for o in session.get_outputs()}

    async def model_metadata(self, model: str, version: str = "") -> dict[str, str]:
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self._executor, self._session, model, version)
        return _couturier_keys(session.get_modelmeta().custom_metadata_map)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._sessions.clear()


BackendKind = Literal["triton", "onnxruntime"]


def make_backend(
    kind: BackendKind,
    *,
    url: str = "127.0.0.1:8001",
    repo_dir: str | Path | None = None,
    timeout_s: float = 10.0,
    intra_op_threads: int = 0,
    version_cache_s: float = 0.0,
    reconnect: list[tuple[str, Any]] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> InferenceBackend:
    """``TritonBackend(url)`` or ``OnnxRuntimeBackend(repo_dir)``; logs which one runs."""
    backend: InferenceBackend
    if kind == "triton":
        backend = TritonBackend(
            url, timeout_s=timeout_s, version_cache_s=version_cache_s, reconnect=reconnect, credentials=credentials
        )
    elif kind == "onnxruntime":
        if repo_dir is None:
            raise ValueError("the onnxruntime backend needs repo_dir (the model repository)")
        backend = OnnxRuntimeBackend(repo_dir, intra_op_threads=intra_op_threads, version_cache_s=version_cache_s)
    else:
        raise ValueError(f"unknown inference backend {kind!r}; use 'triton' or 'onnxruntime'")
    log.info("inference backend selected", backend=backend.name)
    return backend


def backend_for(settings: Any) -> InferenceBackend:
    """The backend a service's ``ModelBackendSettings`` describe."""
    return make_backend(
        settings.inference_backend,
        url=settings.triton_url,
        repo_dir=settings.model_repository,
        timeout_s=settings.inference_timeout_s,
        version_cache_s=settings.model_version_cache_s,
        reconnect=settings.channel_options,
        credentials=channel_credentials(settings.triton_tls, "triton_tls")
        if settings.inference_backend == "triton"
        else None,
    )


def model_check(backend: InferenceBackend, model: str, pinned: str = "") -> Any:
    """A health dependency: ready while ``model`` (the pinned version, or any) can serve.

    The probe always asks the backend (never the version cache) and so refreshes the cache."""
    from couturier.services.common.health import DependencyCheck

    async def probe() -> str:
        return f"{model} v{await backend.resolve_version(model, pinned, fresh=True)}"

    return DependencyCheck(model, probe)


def _triton_transport(settings: Any) -> str:
    if settings.triton_tls_cert_file:
        return "mtls"
    return "tls" if settings.triton_tls_ca_file else "plaintext"


def shown_backend_settings(settings: Any) -> dict[str, str]:
    """What GetStatus shows about where a service's models run."""
    return {
        "inference_backend": settings.inference_backend,
        "triton_url": settings.triton_url if settings.inference_backend == "triton" else "",
        "triton_transport": _triton_transport(settings) if settings.inference_backend == "triton" else "",
        "model_repository": settings.model_repository if settings.inference_backend == "onnxruntime" else "",
        "model_versions": ",".join(f"{k}={v}" for k, v in sorted(settings.model_versions.items())),
        "model_version_cache_s": f"{settings.model_version_cache_s:g}",
    }
