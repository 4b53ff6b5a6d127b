"""The suite's pytest plugin (registered by ``pytest_plugins`` in ``tests/conftest.py``): shared
fixtures, and the marking of integration tests.

Markers (registered in pyproject):

* ``integration``: needs trained models, a real Triton, Milvus with real models, or runs training /
  export. Every test whose fixture closure contains one of :data:`INTEGRATION_FIXTURES` gets it
  here automatically, so a new test over the trained models cannot land in the fast suite by mistake;
  tests that train or export by themselves carry it explicitly.
* ``slow``: takes more than ~30 s.

``make test-fast`` runs ``-m "not slow and not integration"`` (unit tests, fakes instead of models);
``make test`` runs everything.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from couturier.services.common.server import ServiceHost
from support.fakes import (
    FakeInferenceBackend,
    InMemoryImageStore,
    InMemoryVectorStore,
    write_tokenizer,
    write_user_table,
)
from support.hosts import assert_serving, injected_host, real_host
from support.trained import TrainedModels, train_models

#: Fixtures that make a test an integration test (they train, or start real model servers).
INTEGRATION_FIXTURES = frozenset({"trained_models"})


@pytest.hookimpl(tryfirst=True)  # before -m deselects by markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        closure = getattr(item, "fixturenames", ())
        if INTEGRATION_FIXTURES.intersection(closure) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


# -- trained models (once per session) -----------------------------------------------------------


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> TrainedModels:
    """Train (support.trained.MODEL_PROFILE + MODEL_OVERRIDES), export with the text encoder, publish:
    once per session, minutes on a CPU. Tests using it are marked ``integration`` automatically."""
    return train_models(tmp_path_factory.mktemp("trained-models"))


@pytest.fixture
async def service_hosts(trained_models: TrainedModels, tmp_path: Path) -> AsyncIterator[dict[str, ServiceHost]]:
    """The four real services in-process, each on its own port, over the session's trained models.

    Scoring, retrieval (models, milvus-lite files under ``tmp_path``, user vectors, tokenizer) and the
    latent service (its models only: it calls no other service) start first; then the orchestrator
    wired to all three. Every host is SERVING when the test starts; the indexes are empty.
    """
    hosts: dict[str, ServiceHost] = {}
    try:
        for key in ("scoring", "retrieval", "latent"):
            hosts[key] = real_host(key, trained_models, tmp_path)
            await hosts[key].start()
        hosts["orchestrator"] = real_host(
            "orchestrator",
            trained_models,
            tmp_path,
            **{f"{key}_target": hosts[key].address for key in ("scoring", "latent", "retrieval")},
        )
        await hosts["orchestrator"].start()
        for host in hosts.values():
            await assert_serving(host)
        yield hosts
    finally:
        for host in reversed(list(hosts.values())):
            await host.stop(grace_s=0)


# -- fakes (unit tests) --------------------------------------------------------------------------


@pytest.fixture
def fake_backend() -> FakeInferenceBackend:
    """Every model as a deterministic numpy function (version "1"), counting its calls."""
    return FakeInferenceBackend()


@pytest.fixture
def memory_store() -> InMemoryVectorStore:
    """An empty in-memory vector store (exact search, the real filter validation)."""
    return InMemoryVectorStore()


#: Users of the trained table ``fake_hosts`` gives the scoring service (theta: ``fake_user_theta``).
FAKE_USERS = ("u1", "u2", "u3")


def fake_user_theta(backend: FakeInferenceBackend) -> np.ndarray:
    """The (fixed) trained vectors of FAKE_USERS in ``fake_hosts``: (3, K) float32."""
    return np.random.default_rng(0).normal(size=(len(FAKE_USERS), backend.dims.item_dim)).astype(np.float32)


@pytest.fixture
async def fake_hosts(tmp_path: Path, fake_backend: FakeInferenceBackend) -> AsyncIterator[dict[str, ServiceHost]]:
    """Scoring and retrieval in-process on 127.0.0.1 over the fakes: both on ``fake_backend``, each with its
    own empty in-memory vector store (retrieval also an in-memory image store), the scoring service with
    the user table of FAKE_USERS, retrieval with a tiny tokenizer. Both are SERVING when the test starts.
    A starting point for the latent service and the orchestrator over fake siblings."""
    write_user_table(tmp_path / "user_vectors", "1", FAKE_USERS, fake_user_theta(fake_backend))
    tokenizer = write_tokenizer(tmp_path / "tokenizer.json", "same but in red".split())
    hosts: dict[str, ServiceHost] = {}
    try:
        hosts["scoring"] = injected_host(
            "scoring",
            backend=fake_backend,
            store=InMemoryVectorStore("scoring"),
            user_vectors_dir=str(tmp_path / "user_vectors"),
        )
        hosts["retrieval"] = injected_host(
            "retrieval",
            backend=fake_backend,
            store=InMemoryVectorStore("retrieval"),
            images=InMemoryImageStore(),
            tokenizer_json=str(tokenizer),
        )
        for host in hosts.values():
            await host.start()
            await assert_serving(host, timeout_s=5)
        yield hosts
    finally:
        for host in reversed(list(hosts.values())):
            await host.stop(grace_s=0)


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus server for the session: ``COUTURIER_TEST_MILVUS_URI`` when set, else a local
    standalone server started from the ``milvus`` package (dev extra) and stopped after the session.
    Skips only when neither exists."""
    given = os.environ.get("COUTURIER_TEST_MILVUS_URI", "").rstrip("/")
    if given:
        yield given
        return
    from couturier.export.tools.milvus_server import LocalMilvusServer, server_binary

    if server_binary() is None:
        pytest.skip("no Milvus server: install the dev extra (milvus==2.3.5) or set COUTURIER_TEST_MILVUS_URI")
    with LocalMilvusServer(tmp_path_factory.mktemp("milvus-server")) as server:
        yield server.uri
