"""The whole serving stack on one machine: a local Triton over a model repository plus every
service as its own process, wired by environment configuration (the main job, benchmarks, tests).

Vector store modes (docs/vector-store.md): ``store="lite"`` (default) gives scoring and retrieval each
a milvus-lite file under ``work_dir/milvus``; ``store="server"`` points both at a Milvus server
(``milvus_uri``, else the machine's local standalone server, started under ``work_dir/milvus-server``
or reused when one already answers on 127.0.0.1:19530), each service in a database of its own that
the stack creates empty at :meth:`ServingStack.start` and drops at :meth:`ServingStack.stop`.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from couturier.export.tools.launcher import LocalStack
from couturier.export.tools.milvus_server import LocalMilvusServer, create_database, drop_database, list_databases
from couturier.export.triton.local_server import LocalTriton
from couturier.services.common.models import ALL_MODELS, QUERY_GENERATOR, TEXT_ENCODER
from couturier.services.registry import SERVICE_KEYS

#: Models a deployment may lack: the multimodal pair, for a dataset without a usable attribute.
OPTIONAL_MODELS = (TEXT_ENCODER, QUERY_GENERATOR)
#: The services that keep vectors (each gets its own milvus-lite file or server database).
VECTOR_SERVICES = ("scoring", "retrieval")

StoreMode = Literal["lite", "server"]

#: Databases a stack creates on a server: couturier_stack_<pid>_<hex>_<service>.
_STACK_DATABASE = re.compile(r"couturier_stack_(\d+)_[0-9a-f]{6}_[a-z]+")

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ServingStack:
    """Local Triton (all models loaded) + scoring, latent, retrieval and orchestrator processes.

    ``store="lite"``: each vector-keeping service gets its own milvus-lite file under ``work_dir`` (a lite
    file belongs to one process). ``store="server"``: both use a Milvus server (``milvus_uri``, else the
    local one, see :class:`LocalMilvusServer`), each in an empty database of its own for this stack.
    """

    repo_dir: Path
    user_vectors_dir: Path
    work_dir: Path
    triton_home: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    triton: LocalTriton | None = None
    services: LocalStack | None = None
    store: StoreMode = "lite"
    milvus_uri: str = ""
    milvus: LocalMilvusServer | None = None
    _databases: dict[str, str] = field(default_factory=dict, repr=False)  # service -> database (server mode)
    _server_uri: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.store not in ("lite", "server"):
            raise ValueError(f"store must be 'lite' or 'server', got {self.store!r}")
        if self.milvus_uri and self.store != "server":
            raise ValueError("milvus_uri is for store='server'")
        if self.milvus_uri and urlsplit(self.milvus_uri).path.strip("/"):
            raise ValueError(
                f"milvus_uri {self.milvus_uri!r} names a database; give the server (http://host:19530): "
                "the stack creates a database per service"
            )

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
        for key, uri in self._own_store_uris().items():
            env[f"COUTURIER_{key.upper()}_MILVUS_URI"] = uri
        env["COUTURIER_RETRIEVAL_PRODUCT_IMAGES_DIR"] = str(self.work_dir / "milvus" / "product_images")
        env["COUTURIER_SCORING_USER_VECTORS_DIR"] = str(self.user_vectors_dir)
        env["COUTURIER_RETRIEVAL_TOKENIZER_JSON"] = str(self.repo_dir / "text_encoder" / "tokenizer.json")
        # models trained on a dataset without a usable attribute have no query generator (issue 9)
        env["COUTURIER_RETRIEVAL_MULTIMODAL"] = str(self.multimodal).lower()
        return {**env, **self.extra_env}

    def _own_store_uris(self) -> dict[str, str]:
        if self.store == "lite":
            return {key: str(self.work_dir / "milvus" / f"{key}.db") for key in VECTOR_SERVICES}
        if not self._databases:
            raise RuntimeError("store='server': start_store() (or start()) first")
        return {key: f"{self._server_uri}/{database}" for key, database in self._databases.items()}

    @property
    def store_uri(self) -> dict[str, str]:
        """The Milvus URI each vector-keeping service gets (``extra_env`` overrides included): a
        milvus-lite file, or ``<server>/<database>``."""
        uris = self._own_store_uris()
        return {key: self.extra_env.get(f"COUTURIER_{key.upper()}_MILVUS_URI", uri) for key, uri in uris.items()}

    def start_store(self, timeout_s: float = 120.0) -> dict[str, str]:
        """Prepare the vector stores (server mode: the server and one empty database per service);
        returns :attr:`store_uri`. Idempotent."""
        (self.work_dir / "milvus").mkdir(parents=True, exist_ok=True)  # lite files; product images (both modes)
        if self.store == "server" and not self._databases:
            if self.milvus_uri:
                self._server_uri = self.milvus_uri.rstrip("/")
            else:
                if self.milvus is None:
                    self.milvus = LocalMilvusServer(self.work_dir / "milvus-server")
                self._server_uri = self.milvus.start(timeout_s=timeout_s)
                log.info("Milvus server %s %s", "reused at" if self.milvus.reused else "started at", self._server_uri)
                self._drop_orphaned_databases()
            run = f"couturier_stack_{os.getpid()}_{secrets.token_hex(3)}"
            for key in VECTOR_SERVICES:
                database = f"{run}_{key}"
                create_database(self._server_uri, database)
                self._databases[key] = database
        return self.store_uri

    def _drop_orphaned_databases(self) -> None:
        """Databases of stacks whose process is gone (killed before stop) on the local server: the server
        holds at most 64 databases."""
        for database in list_databases(self._server_uri):
            match = _STACK_DATABASE.fullmatch(database)
            if match and not _alive(int(match.group(1))):
                log.warning("dropping database %s of a stack that is gone", database)
                drop_database(self._server_uri, database)

    def stop_store(self) -> None:
        """Drop this stack's server databases and stop the server it started (a reused one keeps running)."""
        databases, self._databases = self._databases, {}
        try:
            for database in databases.values():
                try:
                    drop_database(self._server_uri, database)
                except Exception as exc:  # the server may be gone already; the next stack drops orphans
                    log.warning("could not drop Milvus database %s at %s: %s", database, self._server_uri, exc)
        finally:
            if self.milvus is not None:
                self.milvus.stop()

    async def start(self, timeout_s: float = 120.0) -> None:
        self.start_store()
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
        self.stop_store()
