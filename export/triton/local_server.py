"""Run the real ``tritonserver`` (from the nvidia-pytriton wheel) locally on CPU, without Docker.

The repository's ``backend: "onnxruntime"`` is served by couturier's Python-based backend of that
name (``backend/model.py``), laid out under ``<state>/backends/onnxruntime/``.
"""

from __future__ import annotations

import atexit
import filecmp
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from couturier.export.triton.backend import MODEL_PY
from couturier.export.triton.control import ModelControl, control_header_from_env
from couturier.export.triton.environment import TritonEnvironment, default_home, ensure_environment
from couturier.export.triton.errors import ModelControlError, ServerStartError
from couturier.export.triton.model_config import BACKEND
from couturier.services.common.model_repository import VersionPolicy, read_model_config

log = logging.getLogger(__name__)

_RUNNING: weakref.WeakSet[LocalTriton] = weakref.WeakSet()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _copy_if_changed(src: Path, dst: Path) -> None:
    # A real copy: Triton refuses a symlinked libtriton_python.so.
    if dst.is_symlink():
        dst.unlink()
    if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)


class LocalTriton:
    """A local tritonserver process with explicit model control; also a context manager.

    ``home`` (default ``$COUTURIER_TRITON_HOME`` or ``./var/triton``) holds ``env/`` (the Triton
    virtualenv), ``backends/`` and ``logs/``.

    ``control_header`` (key, value) (default: ``$COUTURIER_TRITON_CONTROL_HEADER``, see control.py): the
    server refuses model load, unload and the repository index over gRPC and HTTP without this header
    (Triton's restricted protocols); :attr:`control` sends it. None: model control open to local callers.
    """

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        env_dir: str | Path | None = None,
        base_python: str | None = None,
        ready_timeout_s: float = 60.0,
        load_timeout_s: float = 120.0,
        exit_timeout_s: int = 10,
        control_header: tuple[str, str] | None = None,
    ) -> None:
        self.control_header = control_header if control_header is not None else control_header_from_env()
        self.home = Path(home if home is not None else default_home()).absolute()
        self.env_dir = Path(env_dir).absolute() if env_dir is not None else self.home / "env"
        self.backends_dir = self.home / "backends"
        self.logs_dir = self.home / "logs"
        self.base_python = base_python
        self.ready_timeout_s = ready_timeout_s
        self.load_timeout_s = load_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.env: TritonEnvironment | None = None
        self.repo_dir: Path | None = None
        self.grpc_port = 0
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: ModelControl | None = None

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> TritonEnvironment:
        """Create/validate the Triton env and lay out the ``onnxruntime`` backend dir (idempotent)."""
        env = ensure_environment(self.env_dir, base_python=self.base_python)
        backend = self.backends_dir / BACKEND
        backend.mkdir(parents=True, exist_ok=True)
        _copy_if_changed(env.python_backend_dir / "libtriton_python.so", backend / "libtriton_python.so")
        _copy_if_changed(
            env.python_backend_dir / "triton_python_backend_utils.py", backend / "triton_python_backend_utils.py"
        )
        _copy_if_changed(env.stub, backend / "triton_python_backend_stub")
        _copy_if_changed(MODEL_PY, backend / "model.py")
        (backend / "triton_python_backend_stub").chmod(0o755)
        self.env = env
        return env

    # -- process ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def grpc_url(self) -> str:
        if not self.grpc_port:
            raise ServerStartError("the server has not been started")
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def control(self) -> ModelControl:
        if self._control is None:
            self._control = ModelControl(self.grpc_url, timeout_s=self.load_timeout_s, header=self.control_header)
        return self._control

    def _command(self, env: TritonEnvironment, ports: dict[str, int], models: Sequence[str], verbose: int) -> list[str]:
        cmd = [
            str(env.tritonserver),
            f"--model-repository={self.repo_dir}",
            f"--backend-directory={self.backends_dir}",
            "--model-control-mode=explicit",
            "--disable-auto-complete-config",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={ports['grpc']}",
            "--http-address=127.0.0.1",
            f"--http-port={ports['http']}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={ports['metrics']}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            f"--log-verbose={verbose}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]
        if self.control_header is not None:
            key, value = self.control_header
            cmd += [
                f"--grpc-restricted-protocol=model-repository:{key}={value}",
                f"--http-restricted-api=model-repository:{key}={value}",
            ]
        cmd += [f"--load-model={m}" for m in models]
        return cmd

    def _process_env(self, env: TritonEnvironment) -> dict[str, str]:
        proc_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        proc_env["PATH"] = f"{env.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        # The env Python's libpython for the stub, then the wheel's bundled libs (the copied stub
        # loses its relative RPATH to them).
        ld_path = [str(env.libdir), str(env.bundled_libs_dir)]
        if os.environ.get("LD_LIBRARY_PATH"):
            ld_path.append(os.environ["LD_LIBRARY_PATH"])
        proc_env["LD_LIBRARY_PATH"] = os.pathsep.join(ld_path)
        proc_env["VIRTUAL_ENV"] = str(env.env_dir)
        return proc_env

    def start(
        self,
        repo_dir: str | Path,
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        load_models: Sequence[str] = (),
        ready_timeout_s: float | None = None,
        log_verbose: int = 0,
    ) -> str:
        """Start tritonserver over ``repo_dir``; return its gRPC url once ready.

        Ports of 0 pick free ones. Waits for readiness (``load_models`` loaded) up to the timeout,
        and kills the server when it is not ready in time or exits: :class:`ServerStartError`.
        """
        if self.running:
            raise ServerStartError(f"already running (pid {self.pid}, {self.grpc_url})")
        env = self.env or self.setup()
        self.repo_dir = Path(repo_dir).absolute()
        if not self.repo_dir.is_dir():
            raise ServerStartError(f"model repository {self.repo_dir} does not exist")
        ports = {
            "grpc": grpc_port or free_port(),
            "http": http_port or free_port(),
            "metrics": metrics_port or free_port(),
        }
        self.grpc_port = ports["grpc"]
        self._control = None
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.logs_dir / f"tritonserver-{time.strftime('%Y%m%d-%H%M%S')}-{self.grpc_port}.log"
        cmd = self._command(env, ports, load_models, log_verbose)
        started = time.monotonic()
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._process_env(env),
                cwd=self.home,
                start_new_session=True,  # its own process group: the stubs die with it
            )
        _RUNNING.add(self)
        log.info("tritonserver pid %s starting on %s (log %s)", self._proc.pid, self.grpc_url, self.log_path)
        timeout = self.ready_timeout_s if ready_timeout_s is None else ready_timeout_s
        deadline = started + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reap()
                raise ServerStartError(f"tritonserver exited with code {code} while starting\n{self.log_tail()}")
            if self.control.server_ready(timeout_s=0.5):
                break
            if time.monotonic() > deadline:
                self.stop(grace_s=0)
                raise ServerStartError(
                    f"tritonserver was not ready within {timeout:.1f} s and was killed "
                    f"(a stub of the wrong Python version hangs in loading)\n{self.log_tail()}"
                )
            time.sleep(0.1)
        log.info("tritonserver ready on %s in %.2f s", self.grpc_url, time.monotonic() - started)
        return self.grpc_url

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _reap(self) -> None:
        """Kill whatever is left in the server's process group (stubs) and forget the process."""
        if self._proc is not None:
            deadline = time.monotonic() + 5.0
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
                while time.monotonic() < deadline:  # until the kernel has removed every member
                    time.sleep(0.02)
                    os.killpg(self._proc.pid, 0)
                log.warning("processes of tritonserver group %s outlived SIGKILL", self._proc.pid)
            except (ProcessLookupError, PermissionError):
                pass
        if self._control is not None:
            self._control.close()
            self._control = None
        _RUNNING.discard(self)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace_s`` for a clean exit, then SIGKILL. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            if grace_s > 0:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, grace_s)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._reap()
        log.info("tritonserver pid %s stopped (exit %s)", proc.pid, proc.returncode)
        return proc.returncode

    # -- models ----------------------------------------------------------------------------
    def load(self, model: str, version: int | None = None) -> None:
        """Load ``model`` (its config's versions, or only ``version``) and wait until it is ready."""
        if version is None:
            self.control.load(model)
        else:
            if self.repo_dir is None:
                raise ModelControlError("start the server before loading models")
            config = read_model_config(self.repo_dir, model)
            config.version_policy.CopyFrom(VersionPolicy.only(version).to_proto())
            self.control.load(model, config)
        if not self.control.ready_versions(model):
            raise ModelControlError(f"{model!r} has no ready version after load\n{self.log_tail()}")

    def unload(self, model: str) -> None:
        """Unload every version of ``model``."""
        self.control.unload(model)

    def __enter__(self) -> LocalTriton:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        server.stop(grace_s=5.0)
