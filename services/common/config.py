"""Typed settings, one object per service, read from the environment (and CLI flags).

Every field can be set as ``COUTURIER_<SERVICE>_<FIELD>`` (e.g. ``COUTURIER_SCORING_PORT=50051``);
the CLI's flags override the environment. Defaults bind to loopback only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from couturier.services.common.downstream import (
    CONNECT_TIMEOUT_MS,
    RECONNECT_BACKOFF_INITIAL_MS,
    RECONNECT_BACKOFF_MAX_MS,
    reconnect_options,
)
from couturier.services.common.errors import InvalidInput
from couturier.services.common.models import LOOP_GRADIENT
from couturier.services.common.security import TlsFiles


class ServerSettings(BaseSettings):
    """Settings every gRPC service has."""

    service_key: ClassVar[str] = "server"

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 only inside a container.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port (None: no endpoint, 0: any free)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the /metrics listener binds, separate from the gRPC port's host: loopback unless a "
        "scraper outside the host (pod) needs it; it has no TLS or authentication (docs/security.md).",
    )
    tls_cert_file: str = Field("", description="PEM certificate (chain) of the gRPC port; set: TLS (docs/security.md).")
    tls_key_file: str = Field("", description="PEM private key of tls_cert_file.")
    tls_client_ca_file: str = Field(
        "", description="PEM CA bundle; set: every client must present a certificate signed by it (mTLS)."
    )
    auth_tokens_file: str = Field(
        "",
        description="File of 'caller-name:token' lines read at start; set: every call but health and reflection "
        "needs 'authorization: Bearer <token>' (UNAUTHENTICATED otherwise).",
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024, description="Max gRPC message size in and out."
    )
    rpc_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Upper bound of one call's work when the caller sets no shorter deadline."
    )
    stream_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="Upper bound of one streaming call (Alter, IndexProducts, IndexCatalogue) when the caller "
        "sets no shorter deadline; past it the call ends with DEADLINE_EXCEEDED.",
    )
    shutdown_grace_s: float = Field(5.0, ge=0, le=300, description="In-flight calls get this long on shutdown.")
    health_interval_s: float = Field(2.0, gt=0, le=300, description="Seconds between dependency checks.")
    max_connection_age_s: float | None = Field(
        None, gt=0, description="Close client connections after this long so load re-balances across pods."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "console"
    log_repeat_limit: int = Field(
        10,
        ge=1,
        le=100_000,
        description="Identical log lines (same logger, event and key fields) written per log_repeat_interval_s; "
        "the rest are dropped and counted in one summary line.",
    )
    log_repeat_interval_s: float = Field(10.0, gt=0, le=3600, description="Window of log_repeat_limit, seconds.")
    reconnect_backoff_initial_ms: int = Field(
        RECONNECT_BACKOFF_INITIAL_MS,
        ge=10,
        le=60_000,
        description="Channels this service opens (Triton, other services): first wait before reconnecting.",
    )
    reconnect_backoff_max_ms: int = Field(
        RECONNECT_BACKOFF_MAX_MS,
        ge=10,
        le=300_000,
        description="Longest wait between reconnection attempts: a returned back end is seen within ~1.2x this.",
    )
    connect_timeout_ms: int = Field(
        CONNECT_TIMEOUT_MS, ge=100, le=60_000, description="Time one connection attempt may take before the next."
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> ServerSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        return self

    @property
    def server_tls(self) -> TlsFiles:
        """The gRPC port's certificate files (security.server_credentials)."""
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> ServerSettings:
        if self.reconnect_backoff_initial_ms > self.reconnect_backoff_max_ms:
            raise ValueError(
                f"reconnect_backoff_initial_ms ({self.reconnect_backoff_initial_ms}) exceeds "
                f"reconnect_backoff_max_ms ({self.reconnect_backoff_max_ms})"
            )
        return self

    @property
    def channel_options(self) -> list[tuple[str, Any]]:
        """Reconnect arguments of every channel this service opens (see downstream.reconnect_options)."""
        return reconnect_options(
            self.reconnect_backoff_initial_ms, self.reconnect_backoff_max_ms, self.connect_timeout_ms
        )

    @field_validator("host", "metrics_host")
    @classmethod
    def _host_not_empty(cls, value: str) -> str:  # also metrics_host
        if not value.strip():
            raise ValueError("must not be empty (use 127.0.0.1 for loopback)")
        return value

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def grpc_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        if self.max_connection_age_s is not None:
            options.append(("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)))
            options.append(("grpc.max_connection_age_grace_ms", int(self.shutdown_grace_s * 1000)))
        return options


class ModelBackendSettings(BaseSettings):
    """Where a service's models run."""

    inference_backend: Literal["triton", "onnxruntime"] = Field(
        "onnxruntime", description="triton: a Triton server at triton_url; onnxruntime: in-process."
    )
    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC address.")
    triton_tls_ca_file: str = Field(
        "", description="PEM CA that signed Triton's gRPC certificate; set (or a client certificate): TLS to Triton."
    )
    triton_tls_cert_file: str = Field("", description="PEM client certificate for a Triton that demands mTLS.")
    triton_tls_key_file: str = Field("", description="PEM private key of triton_tls_cert_file.")
    model_repository: str = Field("var/model_repository", description="Model repository (in-process backend).")
    inference_timeout_s: float = Field(30.0, gt=0, le=600)
    model_version_cache_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="Seconds a resolved model version is reused before the backend is asked again "
        "(0: ask on every request). A new or unloaded version is seen within this time.",
    )
    model_versions: dict[str, str] = Field(
        default_factory=dict,
        description='Pinned model versions, e.g. {"item_encoder": "2"} (JSON in the environment); '
        "a model not named here uses the newest version Triton serves.",
    )

    @model_validator(mode="after")
    def _triton_tls_complete(self) -> ModelBackendSettings:
        if bool(self.triton_tls_cert_file) != bool(self.triton_tls_key_file):
            raise ValueError("triton_tls_cert_file and triton_tls_key_file go together: set both or neither")
        return self

    @property
    def triton_tls(self) -> TlsFiles:
        """Certificate files of the channel to Triton (nothing set: plaintext)."""
        return TlsFiles(self.triton_tls_cert_file, self.triton_tls_key_file, self.triton_tls_ca_file)

    def model_version(self, model: str) -> str:
        """The pinned version of ``model`` ("" = whatever the backend serves)."""
        return self.model_versions.get(model, "")


class VectorStoreSettings(BaseSettings):
    """Where a service keeps its vectors (``COUTURIER_<SERVICE>_MILVUS_URI``)."""

    milvus_uri: str = Field(
        "var/milvus/couturier.db",  # replaced by the service's own file, see _own_lite_file
        description="milvus-lite file path (default var/milvus/<service>.db: a lite file belongs to one "
        "process), or http://host:19530 for a Milvus server.",
    )
    milvus_token: str = Field("", description="Milvus token (user:password) for a secured server.")
    milvus_tls_ca_file: str = Field(
        "", description="PEM CA that signed the Milvus server's certificate; set: TLS to the server (not lite)."
    )
    milvus_tls_cert_file: str = Field(
        "", description="PEM client certificate for a Milvus server with tlsMode 2 (mTLS; needs milvus_tls_ca_file)."
    )
    milvus_tls_key_file: str = Field("", description="PEM private key of milvus_tls_cert_file.")
    milvus_tls_server_name: str = Field(
        "", description="Name to check the Milvus server's certificate against, when it is not the URI's host."
    )
    milvus_threads: int = Field(
        8, ge=1, le=64, description="Calls to a Milvus server that run at once (a milvus-lite file uses one thread)."
    )
    milvus_search_batch_max: int = Field(
        64,
        ge=1,
        le=1024,
        description="Concurrent searches of the same collection, filter and k are merged into one Milvus call "
        "of at most this many query vectors (1: no merging). See docs/vector-store.md.",
    )
    milvus_search_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Extra wait for a merged search call to fill (0: send as soon as a call is free; "
        "searches that arrive while calls are busy are merged anyway).",
    )

    @model_validator(mode="after")
    def _milvus_tls_complete(self) -> VectorStoreSettings:
        if bool(self.milvus_tls_cert_file) != bool(self.milvus_tls_key_file):
            raise ValueError("milvus_tls_cert_file and milvus_tls_key_file go together: set both or neither")
        if self.milvus_tls_cert_file and not self.milvus_tls_ca_file:
            raise ValueError("milvus_tls_cert_file (mTLS) needs milvus_tls_ca_file")
        return self

    @model_validator(mode="before")
    @classmethod
    def _own_lite_file(cls, data: Any) -> Any:
        """Unset milvus_uri: each service its own milvus-lite file, var/milvus/<service_key>.db."""
        key = getattr(cls, "service_key", "")
        if isinstance(data, dict) and data.get("milvus_uri") is None and key and key != "server":
            return {**data, "milvus_uri": f"var/milvus/{key}.db"}
        return data


class ScoringSettings(ServerSettings, ModelBackendSettings, VectorStoreSettings):
    model_config = SettingsConfigDict(env_prefix="COUTURIER_SCORING_", extra="forbid")
    service_key: ClassVar[str] = "scoring"
    port: int = Field(50051, ge=0, le=65535)
    user_vectors_dir: str = Field(
        "var/user_vectors",
        description="Trained DVBPR user vectors, one file per item encoder version: item_encoder_v<N>.npz.",
    )


class LatentSettings(ServerSettings, ModelBackendSettings):
    model_config = SettingsConfigDict(env_prefix="COUTURIER_LATENT_", extra="forbid")
    service_key: ClassVar[str] = "latent"
    port: int = Field(50052, ge=0, le=65535)
    optimiser: Literal["loop", "reference"] = Field(
        "loop",
        description="loop: loop_steps Adam steps per call of the loop models (inv_loop, pref_loop, shift_loop); "
        "reference: the numpy optimiser, one gradient-model call per step. TOP_K_SHARE designs run on the "
        "reference optimiser in both (their user weights change every step); GetStatus shows it.",
    )
    loop_steps: int = Field(
        10,
        ge=1,
        le=500,
        description="Adam steps per loop-model call (optimiser=loop). Alter then reports progress every "
        "max(report_every, loop_steps) steps.",
    )
    # No downstream targets: the latent service calls no other couturier service (the orchestrator
    # resolves user ids and product ids into the requests' resolved inputs).

    @model_validator(mode="after")
    def _loop_pins_paired(self) -> LatentSettings:
        """On the loop optimiser a request calls a loop model and its gradient model (start selection,
        TOP_K_SHARE, the evaluation of seller variants): a pin on one of them alone would mix exports."""
        if self.optimiser != "loop":
            return self
        for loop, gradient in LOOP_GRADIENT.items():
            if bool(self.model_versions.get(loop)) != bool(self.model_versions.get(gradient)):
                pinned, other = (loop, gradient) if self.model_versions.get(loop) else (gradient, loop)
                raise ValueError(
                    f"model_versions pins {pinned}={self.model_versions[pinned]} but not {other}: with "
                    f"optimiser=loop the service calls both; pin both to the versions of one export "
                    f"(or use optimiser=reference, which calls the gradient models only)"
                )
        return self


class RetrievalSettings(ServerSettings, ModelBackendSettings, VectorStoreSettings):
    model_config = SettingsConfigDict(env_prefix="COUTURIER_RETRIEVAL_", extra="forbid")
    service_key: ClassVar[str] = "retrieval"
    port: int = Field(50053, ge=0, le=65535)
    product_images_dir: str = Field(
        "var/product_images",
        description="Where indexed products' images are kept (one file per product); every replica must "
        "mount the same folder (a shared volume).",
    )
    tokenizer_json: str = Field(
        "var/model_repository/text_encoder/tokenizer.json",
        description="tokenizer.json of the text encoder (published beside its model).",
    )
    multimodal: bool = Field(
        True,
        description="Serve SearchByImageAndText (needs text_encoder, query_generator and the tokenizer). "
        "Off for models trained on a dataset without an attribute usable for text changes: the RPC then "
        "answers FAILED_PRECONDITION and health does not wait for those models.",
    )


class OrchestratorSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="COUTURIER_ORCHESTRATOR_", extra="forbid")
    service_key: ClassVar[str] = "orchestrator"
    port: int = Field(50050, ge=0, le=65535)
    scoring_target: str = "127.0.0.1:50051"
    latent_target: str = "127.0.0.1:50052"
    retrieval_target: str = "127.0.0.1:50053"
    downstream_tls_ca_file: str = Field(
        "", description="PEM CA that signed scoring's, latent's and retrieval's certificates; set: TLS to them."
    )
    downstream_tls_cert_file: str = Field(
        "", description="PEM client certificate the orchestrator presents to services that demand mTLS."
    )
    downstream_tls_key_file: str = Field("", description="PEM private key of downstream_tls_cert_file.")
    downstream_tls_server_name: str = Field(
        "", description="Name to check the services' certificates against instead of the target's host (tests)."
    )
    downstream_token_file: str = Field(
        "", description="File holding the bearer token sent to services that have auth_tokens_file set."
    )

    @model_validator(mode="after")
    def _downstream_tls_complete(self) -> OrchestratorSettings:
        if bool(self.downstream_tls_cert_file) != bool(self.downstream_tls_key_file):
            raise ValueError("downstream_tls_cert_file and downstream_tls_key_file go together: set both or neither")
        return self

    @property
    def downstream_tls(self) -> TlsFiles:
        """Certificate files of the channels to the other services (nothing set: plaintext)."""
        return TlsFiles(self.downstream_tls_cert_file, self.downstream_tls_key_file, self.downstream_tls_ca_file)


SETTINGS_BY_SERVICE: dict[str, type[ServerSettings]] = {
    cls.service_key: cls for cls in (ScoringSettings, LatentSettings, RetrievalSettings, OrchestratorSettings)
}


def load_settings(service: str, **overrides: Any) -> ServerSettings:
    """Settings of ``service`` from the environment, with non-None ``overrides`` (CLI flags) on top.

    Raises InvalidInput naming every bad field and its environment variable.
    """
    try:
        cls = SETTINGS_BY_SERVICE[service]
    except KeyError:
        raise InvalidInput(f"unknown service {service!r}; choose one of {sorted(SETTINGS_BY_SERVICE)}") from None
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"{field} (env {prefix}{field.upper()}): {error['msg']}")
        raise InvalidInput(f"invalid {service} settings: " + "; ".join(problems)) from None
