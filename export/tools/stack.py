"""The whole serving stack on one machine: a local Triton over a model repository plus every
service as its own process, wired by environment configuration (the main job, benchmarks, tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from couturier.export.tools.launcher import LocalStack
from couturier.export.triton.local_server import LocalTriton
from couturier.services.common.models import ALL_MODELS, QUERY_GENERATOR, TEXT_ENCODER
from couturier.services.registry import SERVICE_KEYS

#: Models a deployment may lack: the multimodal pair, for a dataset without a usable attribute.
OPTIONAL_MODELS = (TEXT_ENCODER, QUERY_GENERATOR)


@dataclass
class ServingStack:
    """Local Triton (all models loaded) + scoring, latent, retrieval and orchestrator processes.

    Each vector-keeping service gets its own milvus-lite file under ``work_dir`` (a lite file
    belongs to one process).
    """

    repo_dir: Path
    user_vectors_dir: Path
    work_dir: Path
    triton_home: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    triton: LocalTriton | None = None
    services: LocalStack | None = None

    def start_triton(self, grpc_port: int = 0) -> str:
        if self.triton is None:
            self.triton = LocalTriton(self.triton_home)
        models = [m for m in ALL_MODELS if m not in OPTIONAL_MODELS or (self.repo_dir / m).is_dir()]
        return self.triton.start(self.repo_dir, grpc_port=grpc_port, load_models=models)

    @property
    def multimodal(self) -> bool:
        """Whether the repository holds the multimodal models (absent for a dataset without a usable attribute)."""
        return all((self.repo_dir / m).is_dir() for m in OPTIONAL_MODELS)

    def service_env(self, triton_url: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for key in ("scoring", "latent", "retrieval"):
            prefix = f"COUTURIER_{key.upper()}_"
            env[prefix + "INFERENCE_BACKEND"] = "triton"
            env[prefix + "TRITON_URL"] = triton_url
            env[prefix + "MODEL_REPOSITORY"] = str(self.repo_dir)
            env[prefix + "HEALTH_INTERVAL_S"] = "0.5"
        env["COUTURIER_SCORING_MILVUS_URI"] = str(self.work_dir / "milvus" / "scoring.db")
        env["COUTURIER_RETRIEVAL_MILVUS_URI"] = str(self.work_dir / "milvus" / "retrieval.db")
        env["COUTURIER_RETRIEVAL_PRODUCT_IMAGES_DIR"] = str(self.work_dir / "milvus" / "product_images")
        env["COUTURIER_SCORING_USER_VECTORS_DIR"] = str(self.user_vectors_dir)
        env["COUTURIER_RETRIEVAL_TOKENIZER_JSON"] = str(self.repo_dir / "text_encoder" / "tokenizer.json")
        # models trained on a dataset without a usable attribute have no query generator (issue 9)
        env["COUTURIER_RETRIEVAL_MULTIMODAL"] = str(self.multimodal).lower()
        return {**env, **self.extra_env}

    async def start(self, timeout_s: float = 120.0) -> None:
        (self.work_dir / "milvus").mkdir(parents=True, exist_ok=True)
        url = self.start_triton()
        self.services = LocalStack(self.work_dir / "logs", extra_env=self.service_env(url))
        self.services.start(SERVICE_KEYS)
        await self.services.wait_until_serving(timeout_s=timeout_s)

    def target(self, key: str) -> str:
        assert self.services is not None, "start() first"
        return self.services.target(key)

    def stop(self) -> None:
        if self.services is not None:
            self.services.stop()
            self.services = None
        if self.triton is not None:
            self.triton.stop()
