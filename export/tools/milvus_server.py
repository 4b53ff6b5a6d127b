"""A real Milvus standalone server on this machine, without Docker (the PyPI package ``milvus``).

The ``milvus`` wheel (2.3.5, in the ``dev`` extra) ships the server binary and its etcd and runs them
with ``milvus-server --data DIR``. Every component is told to use 127.0.0.1, but the 2.3.5 build still
listens on all interfaces (19530, 9091 and about eight internal ports; only its etcd keeps to loopback)
without authentication, so this is a developer and CI mode for a machine whose firewall keeps those
ports in, not a deployment. Production runs Milvus from its Helm chart (docs/deployment.md, docs/vector-store.md).

One server per machine: the embedded build pins its ports, so :meth:`LocalMilvusServer.start` reuses a
server that already answers on 127.0.0.1:19530 (started by another stack, a test session or by hand)
instead of failing, and only a server it started itself is stopped by :meth:`LocalMilvusServer.stop`.
Starting is serialised across processes by a lock file, so two stacks starting at once share one server.
Give each user of a shared server its own database (:func:`create_database`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

#: Components whose address is pinned to loopback.
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")
PORT = 19530  # the proxy; the embedded build does not move its other ports, so one server per machine
#: Database names the server accepts (letters, digits, '_'; not starting with a digit).
_DATABASE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


log = logging.getLogger(__name__)


class MilvusServerError(RuntimeError):
    """The local Milvus server could not be started (missing binary, port taken, not ready in time)."""


def server_binary() -> Path | None:
    """``milvus-server`` next to this interpreter (installed by the ``milvus`` package), else on PATH."""
    beside = Path(sys.executable).parent / "milvus-server"
    if beside.is_file():
        return beside
    found = shutil.which("milvus-server")
    return Path(found) if found else None


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _answers(uri: str) -> bool:
    """Whether a Milvus server answers at ``uri`` (a list_collections within 2 s)."""
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, timeout=2)
    except Exception:
        return False
    try:
        client.list_collections(timeout=2)
        return True
    except Exception:
        return False
    finally:
        client.close()


def _writable(uri: str) -> str | None:
    """None when the server at ``uri`` can create and drop a collection within 10 s, else the error.

    A server left behind by a killed run can still list collections after its data directory is gone;
    reusing it would fail later, inside the tests or stacks that share it.
    """
    from pymilvus import MilvusClient

    name = f"couturier_probe_{os.getpid()}"
    try:
        client = MilvusClient(uri=uri, timeout=10)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        client.create_collection(name, dimension=2, timeout=10)
        client.drop_collection(name, timeout=10)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


class LocalMilvusServer:
    """Start with :meth:`start` (or ``with``), talk to :attr:`uri`, stop with :meth:`stop`.

    The server's files live under ``data_dir``, its output in ``data_dir/server.log``. Stopping ends
    the whole process group (the launcher, milvus and etcd). When a server already answers on the port,
    :meth:`start` reuses it (:attr:`reused` is then True, ``data_dir`` is unused) and :meth:`stop` leaves
    it running.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.uri = f"http://127.0.0.1:{PORT}"
        self.log_path = self.data_dir / "server.log"
        self.reused = False
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The launcher's process id while this object runs the server (None when reused or stopped)."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the server (or reuse one that answers) and wait until it answers; returns :attr:`uri`."""
        lock_path = Path(tempfile.gettempdir()) / f"couturier-milvus-{PORT}.lock"
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one start at a time on this machine; released on close
            return self._start_locked(timeout_s)

    def _start_locked(self, timeout_s: float) -> str:
        if _port_taken(PORT):
            if _answers(self.uri):
                problem = _writable(self.uri)
                if problem is not None:
                    raise MilvusServerError(
                        f"a Milvus server answers on 127.0.0.1:{PORT} but cannot create a collection ({problem}); "
                        "it may be left over from a killed run: stop it (pkill -f 'milvus run standalone') and retry"
                    )
                self.reused = True
                log.info("reusing the Milvus server already running at %s", self.uri)
                return self.uri
            raise MilvusServerError(
                f"port {PORT} on 127.0.0.1 is taken by something that does not answer as a Milvus server"
            )
        binary = server_binary()
        if binary is None:
            raise MilvusServerError("milvus-server is not installed; `pip install milvus==2.3.5` (the dev extra)")
        self.reused = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(binary), "--data", str(self.data_dir)]
        for component in COMPONENTS:
            args += ["--extra-config", f"{component}.ip=127.0.0.1"]
        with self.log_path.open("ab") as output:
            self._process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        log.warning(
            "local Milvus server %s listens on all interfaces without authentication (the 2.3.5 build ignores "
            "the loopback settings for most ports): for a developer machine behind a firewall only",
            self.uri,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise MilvusServerError(f"milvus-server exited with {self._process.returncode}; see {self.log_path}")
            if _answers(self.uri):
                return self.uri
            time.sleep(0.5)
        self.stop()
        raise MilvusServerError(f"Milvus server not ready after {timeout_s:g} s (stopped); see {self.log_path}")

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``grace_s``; a reused server is left
        running. Idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        group = os.getpgid(process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(group, signal.SIGKILL)  # etcd and milvus outlive the launcher on SIGTERM at times
        except ProcessLookupError:
            pass
        process.wait(timeout=10)

    def __enter__(self) -> LocalMilvusServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def create_database(uri: str, name: str) -> str:
    """Create database ``name`` on the server at ``uri`` when missing; returns the URI that selects it
    (``<uri>/<name>``, the form :class:`~couturier.services.common.vectors.VectorStore` and pymilvus take)."""
    from pymilvus import MilvusClient

    if not _DATABASE.fullmatch(name):
        raise ValueError(f"database name {name!r} must be letters, digits and '_', not starting with a digit")
    client = MilvusClient(uri=uri, timeout=10)
    try:
        if name not in client.list_databases():
            client.create_database(name)
    finally:
        client.close()
    return f"{uri.rstrip('/')}/{name}"


def drop_database(uri: str, name: str) -> None:
    """Drop database ``name`` and its collections (no error when it does not exist)."""
    from pymilvus import MilvusClient

    admin = MilvusClient(uri=uri, timeout=10)
    try:
        if name not in admin.list_databases():
            return
        scoped = MilvusClient(uri=f"{uri.rstrip('/')}/{name}", timeout=10)  # use_database needs server >= 2.4
        try:
            for collection in scoped.list_collections():
                scoped.drop_collection(collection)
        finally:
            scoped.close()
        admin.drop_database(name)
    finally:
        admin.close()


def list_databases(uri: str) -> list[str]:
    """The databases of the server at ``uri``."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, timeout=10)
    try:
        return list(client.list_databases())
    finally:
        client.close()
