"""Fixtures of the reliability suite: a Milvus server that this suite may restart.

``milvus_server_uri`` is overridden here (tests outside ``tests/reliability`` keep the one of
``support.plugin``) so that the server the suite talks to is started, and owned, by the
``milvus_server`` fixture below: ``test_milvus_server_stack.py`` restarts it under load. Default test
order runs ``tests/reliability`` before ``tests/test_vector_store.py``, so in a full run this fixture
starts the session's server and the plugin's fixture later reuses it (its ``stop()`` then leaves it
running); this fixture stops it at the end of the session.

Other stacks keep their databases through a restart: the server comes back on the same data directory.
The restart test skips when the server is not this session's own (``COUTURIER_TEST_MILVUS_URI``, or a
server that already answered on 127.0.0.1:19530 when the session began: another test run's, or one
started by hand), because restarting it would break whoever else uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from couturier.export.tools.milvus_server import LocalMilvusServer


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMilvusServer | None]:
    """The local Milvus standalone server of this session (None when ``COUTURIER_TEST_MILVUS_URI`` names
    an external one). ``.reused`` is True when a server already answered on the port: then this session
    does not own it (and must not restart it). Skips when there is neither."""
    if os.environ.get("COUTURIER_TEST_MILVUS_URI", "").strip():
        yield None
        return
    from couturier.export.tools.milvus_server import LocalMilvusServer, server_binary

    if server_binary() is None:
        pytest.skip("no Milvus server: install the dev extra (milvus==2.3.5) or set COUTURIER_TEST_MILVUS_URI")
    server = LocalMilvusServer(tmp_path_factory.mktemp("milvus-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()  # a reused server keeps running


@pytest.fixture(scope="session")
def milvus_server_uri(milvus_server: LocalMilvusServer | None) -> str:
    """The session's Milvus server (as ``support.plugin.milvus_server_uri``, started by ``milvus_server``)."""
    if milvus_server is None:
        return os.environ["COUTURIER_TEST_MILVUS_URI"].strip().rstrip("/")
    return milvus_server.uri
