"""Model control over Triton's gRPC API (any Triton: the local one or NGC's): load, unload, index."""

from __future__ import annotations

import time
from dataclasses import dataclass

import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from couturier.export.triton.errors import ModelControlError
from couturier.export.triton.model_config import config_to_json


@dataclass(frozen=True)
class ModelState:
    """One row of Triton's repository index."""

    name: str
    version: str
    state: str
    reason: str


class ModelControl:
    """Synchronous model-control client for the Triton server at ``url`` (``host:port``, gRPC)."""

    def __init__(self, url: str, *, timeout_s: float = 120.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ModelControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def server_ready(self, timeout_s: float = 1.0) -> bool:
        """True when the server answers and reports ready; False when it cannot be reached."""
        try:
            return bool(self._client.is_server_ready(client_timeout=timeout_s))
        except InferenceServerException:
            return False

    def index(self) -> list[ModelState]:
        """Every model (and version) the repository holds, with its state."""
        try:
            response = self._client.get_model_repository_index(client_timeout=10.0)
        except InferenceServerException as exc:
            raise ModelControlError(f"cannot read the repository index from {self.url}: {exc.message()}") from exc
        return [ModelState(m.name, m.version, m.state, m.reason) for m in response.models]

    def ready_versions(self, model: str) -> list[int]:
        """Versions of ``model`` in state READY, ascending."""
        return sorted(int(s.version) for s in self.index() if s.name == model and s.state == "READY" and s.version)

    def states(self, model: str) -> dict[int, str]:
        """State of every version of ``model`` the index lists (READY, LOADING, UNLOADING, UNAVAILABLE)."""
        return {int(s.version): s.state for s in self.index() if s.name == model and s.version}

    def load(self, model: str, config: pb.ModelConfig | None = None) -> None:
        """Load (or reload) ``model``; with ``config`` the server uses it instead of config.pbtxt.

        Returns when the load finished. Triton skips a load of unchanged files and config.
        """
        try:
            self._client.load_model(
                model, config=config_to_json(config) if config is not None else None, client_timeout=self.timeout_s
            )
        except InferenceServerException as exc:
            if "Deadline" in (exc.message() or "") or exc.status() == "StatusCode.DEADLINE_EXCEEDED":
                raise ModelControlError(
                    f"loading {model!r} did not finish within {self.timeout_s:.0f} s (a stub of the wrong "
                    "Python version hangs in loading; see the server log)"
                ) from exc
            raise ModelControlError(f"loading {model!r} failed: {exc.message()}") from exc

    def unload(self, model: str, *, wait: bool = True) -> None:
        """Unload every version of ``model`` (in-flight requests finish first)."""
        try:
            self._client.unload_model(model, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise ModelControlError(f"unloading {model!r} failed: {exc.message()}") from exc
        deadline = time.monotonic() + self.timeout_s
        while wait and self.ready_versions(model):
            if time.monotonic() > deadline:
                raise ModelControlError(f"{model!r} still has ready versions {self.timeout_s:.0f} s after unload")
            time.sleep(0.05)
