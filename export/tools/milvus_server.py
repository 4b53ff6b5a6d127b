"""A real Milvus standalone server on this machine, without Docker (the PyPI package ``milvus``).

The ``milvus`` wheel (2.3.5, in the ``dev`` extra) ships the server binary and its etcd and runs them
with ``milvus-server --data DIR``. Every component is told to use 127.0.0.1; the embedded build still
listens on all interfaces for some ports (see shared/DESIGN.md), so this is a developer and CI mode,
not a deployment. Production runs Milvus from its Helm chart (docs/deployment.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

#: Components whose address is pinned to loopback.
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")
PORT = 19530  # the proxy; the embedded build does not move its other ports, so one server per machine


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


class LocalMilvusServer:
    """Start with :meth:`start` (or ``with``), talk to :attr:`uri`, stop with :meth:`stop`.

    The server's files live under ``data_dir``, its output in ``data_dir/server.log``. Stopping ends
    the whole process group (the launcher, milvus and etcd).
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.uri = f"http://127.0.0.1:{PORT}"
        self.log_path = self.data_dir / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the server and wait until it answers; returns :attr:`uri`."""
        binary = server_binary()
        if binary is None:
            raise MilvusServerError("milvus-server is not installed; `pip install milvus==2.3.5` (the dev extra)")
        if _port_taken(PORT):
            raise MilvusServerError(f"port {PORT} on 127.0.0.1 is taken: another Milvus server is running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(binary), "--data", str(self.data_dir)]
        for component in COMPONENTS:
            args += ["--extra-config", f"{component}.ip=127.0.0.1"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise MilvusServerError(f"milvus-server exited with {self._process.returncode}; see {self.log_path}")
            if self._answers():
                return self.uri
            time.sleep(0.5)
        self.stop()
        raise MilvusServerError(f"Milvus server not ready after {timeout_s:g} s (stopped); see {self.log_path}")

    def _answers(self) -> bool:
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=2)
        except Exception:
            return False
        try:
            client.list_collections()
            return True
        except Exception:
            return False
        finally:
            client.close()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``grace_s``. Idempotent."""
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
