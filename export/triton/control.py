"""Model control over Triton's gRPC API (any Triton: the local one or NGC's): load, unload, index."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from couturier.export.triton.errors import ModelControlError
from couturier.export.triton.model_config import config_to_json

#: Environment variable holding the model-control header, ``<key>=<value>`` (docs/security.md): a Triton
#: started with ``--grpc-restricted-protocol=model-repository:<key>=<value>`` (LocalTriton does, when it is
#: set) refuses load, unload and the repository index without it; ModelControl sends it.
CONTROL_HEADER_ENV = "COUTURIER_TRITON_CONTROL_HEADER"
#: Prefix Triton puts before ``<key>`` when it checks a gRPC request's metadata (HTTP checks ``<key>`` itself).
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
_HEADER_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def parse_control_header(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value); ModelControlError when malformed (gRPC metadata keys are lower case)."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not _HEADER_KEY.match(key) or not value or any(c.isspace() or c in ",:" for c in value):
        raise ModelControlError(
            f"{CONTROL_HEADER_ENV} must be '<key>=<value>' with a lower-case key and a value without spaces, "
            "',' or ':' (e.g. couturier-model-control=<random secret>)"
        )
    return key, value


def control_header_from_env() -> tuple[str, str] | None:
    """The model-control header configured in :data:`CONTROL_HEADER_ENV`, or None."""
    text = os.environ.get(CONTROL_HEADER_ENV, "")
    return parse_control_header(text) if text else None


@dataclass(frozen=True)
class ModelState:
    """One row of Triton's repository index."""

    name: str
    version: str
    state: str
    reason: str


class ModelControl:
    """Synchronous model-control client for the Triton server at ``url`` (``host:port``, gRPC).

    ``header``: (key, value) sent with every model-repository call, for a Triton whose model control is
    restricted (default: :func:`control_header_from_env`; None there: no header)."""

    def __init__(self, url: str, *, timeout_s: float = 120.0, header: tuple[str, str] | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.header = header if header is not None else control_header_from_env()
        # Triton expects a restricted gRPC protocol's header as triton-grpc-protocol-<key>
        self._headers = {f"{GRPC_HEADER_PREFIX}{self.header[0]}": self.header[1]} if self.header is not None else None
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
            response = self._client.get_model_repository_index(headers=self._headers, client_timeout=10.0)
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
                model,
                config=config_to_json(config) if config is not None else None,
                headers=self._headers,
                client_timeout=self.timeout_s,
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
            self._client.unload_model(model, headers=self._headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise ModelControlError(f"unloading {model!r} failed: {exc.message()}") from exc
        deadline = time.monotonic() + self.timeout_s
        while wait and self.ready_versions(model):
            if time.monotonic() > deadline:
                raise ModelControlError(f"{model!r} still has ready versions {self.timeout_s:.0f} s after unload")
            time.sleep(0.05)
