"""Start couturier services as separate local processes (the main job, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from couturier.services.client import wait_until_serving
from couturier.services.registry import SERVICE_KEYS


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    key: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class LocalStack:
    """Every service in its own process on 127.0.0.1, wired to each other by environment config."""

    log_dir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def start(self, keys: tuple[str, ...] = SERVICE_KEYS) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = {key: free_port() for key in keys}
        env = {**os.environ, **self.extra_env}
        for key, port in ports.items():
            env[f"COUTURIER_{key.upper()}_PORT"] = str(port)
        for key in ("scoring", "latent", "retrieval"):
            if key in ports:
                env[f"COUTURIER_ORCHESTRATOR_{key.upper()}_TARGET"] = f"127.0.0.1:{ports[key]}"
        env.setdefault("COUTURIER_ORCHESTRATOR_HEALTH_INTERVAL_S", "0.5")
        for key in keys:
            log_path = self.log_dir / f"{key}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "couturier.services.cli", "serve", key],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            self.processes[key] = ServiceProcess(key, ports[key], process, log_path)

    async def wait_until_serving(self, timeout_s: float = 60.0) -> dict[str, float]:
        """Seconds each service took to report SERVING; fails naming the service and its log."""
        waited: dict[str, float] = {}
        for key, proc in self.processes.items():
            if proc.process.poll() is not None:
                raise RuntimeError(f"{key} exited with {proc.process.returncode}; see {proc.log_path}")
            try:
                waited[key] = await wait_until_serving(proc.target, timeout_s=timeout_s)
            except TimeoutError as exc:
                raise TimeoutError(f"{key}: {exc}; see {proc.log_path}") from None
        return waited

    def stop(self, timeout_s: float = 15.0) -> dict[str, int]:
        """SIGTERM every service (graceful), SIGKILL after the timeout; returns exit codes."""
        for proc in self.processes.values():
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        for key, proc in self.processes.items():
            try:
                codes[key] = proc.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                codes[key] = proc.process.wait()
        return codes

    def target(self, key: str) -> str:
        return self.processes[key].target

    def log_tail(self, key: str, lines: int = 40) -> str:
        path = self.processes[key].log_path
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
