"""The service images built for real (`make images`, scripts/build_images.sh) and run.

Skipped where no engine exists: neither a Docker daemon that answers nor buildah (run as root). Here the
engine is docker when its daemon answers, else rootful buildah with the Debian-built stand-in for
python:3.11-slim-bookworm (docker/python-base.sh). The test builds every target, reads the image configs,
lists the installed distributions inside each image (no torch in any), then starts each service's own
entry point (ENTRYPOINT + CMD of its image) over the session's trained models and waits, with a deadline,
until `couturier health` from the host answers SERVING; the image's HEALTHCHECK command must agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from couturier.export.tools.launcher import free_port
from support.trained import TrainedModels

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("scoring", "latent", "retrieval", "orchestrator")
TARGETS = (*SERVICES, "tools")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
#: distributions no image may contain (torch and what only the export extra brings)
FORBIDDEN = {"torch", "torchvision", "sentence-transformers", "onnxscript"}
BUILD_TIMEOUT_S = 3600  # a cold build downloads ~1 GB of wheels; a warm one takes seconds
SERVING_DEADLINE_S = 180.0

LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, importlib.util as u, json, sys; "
    "print(json.dumps({'dists': sorted({d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()}), "
    "'torch_importable': u.find_spec('torch') is not None, 'python': sys.version.split()[0]}))"
)


def detect_engine() -> str | None:
    """docker when its daemon answers, else buildah when installed and run as root, else None."""
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
                return "docker"
        except subprocess.TimeoutExpired:
            pass
    if shutil.which("buildah") and os.geteuid() == 0:
        return "buildah"
    return None


ENGINE = detect_engine()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ENGINE is None, reason="no container engine: neither a Docker daemon nor buildah as root"),
]


def image(target: str) -> str:
    return f"couturier/{target}:{VERSION}"


def engine_run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    assert ENGINE is not None
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)


def image_config(target: str) -> dict:
    """The Docker-format config of a built image (Entrypoint, Cmd, User, Env, Healthcheck...)."""
    if ENGINE == "docker":
        result = engine_run(["image", "inspect", image(target)])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)[0]["Config"]
    result = engine_run(["inspect", "--type", "image", image(target)])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["Docker"]["config"]


@dataclass
class Container:
    """One container of an image: a buildah working container, or a named docker container."""

    target: str
    name: str
    log_path: Path
    mounts: list[tuple[Path, str]] = field(default_factory=list)  # (host path, container path), read-only
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    serving_after_s: float | None = None  # seconds from start to SERVING
    started_at: float = 0.0

    def _mount_args(self) -> list[str]:
        return [arg for host, inside in self.mounts for arg in ("-v", f"{host}:{inside}:ro")]

    def _env_args(self) -> list[str]:
        return [arg for name, value in self.env.items() for arg in ("-e", f"{name}={value}")]

    def create(self) -> None:
        if ENGINE == "buildah":
            result = engine_run(["from", "--pull=false", "--name", self.name, image(self.target)])
            assert result.returncode == 0, result.stderr

    def exec(self, command: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command inside the image (a started docker container, or the buildah working container)."""
        if ENGINE == "docker":
            if self.process is None:
                args = ["run", "--rm", "--network", "host", *self._env_args(), "--entrypoint", command[0]]
                return engine_run([*args, image(self.target), *command[1:]], timeout)
            return engine_run(["exec", *self._env_args(), self.name, *command], timeout)
        isolation = ["--isolation", "chroot"]
        return engine_run(["run", *isolation, *self._env_args(), self.name, "--", *command], timeout)

    def start(self, config: dict) -> None:
        """The image's own entry point (ENTRYPOINT + CMD, its user, env and working folder)."""
        log = self.log_path.open("wb")
        if ENGINE == "docker":
            command = ["docker", "run", "--rm", "--name", self.name, "--network", "host"]
            command += [*self._mount_args(), *self._env_args(), image(self.target)]
        else:
            entry = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
            command = ["buildah", "run", "--isolation", "chroot", *self._mount_args(), *self._env_args()]
            command += [self.name, "--", *entry]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.monotonic()
        log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def stop(self) -> None:
        if ENGINE == "docker":
            engine_run(["rm", "-f", self.name], timeout=60)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        if ENGINE == "buildah":
            engine_run(["rm", self.name], timeout=60)


@pytest.fixture(scope="module")
def built_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """`scripts/build_images.sh` (what `make images` runs): every target built; wall seconds per run."""
    log = tmp_path_factory.mktemp("images") / "build.log"
    started = time.monotonic()
    with log.open("wb") as out:
        result = subprocess.run(
            [str(ROOT / "scripts" / "build_images.sh"), *TARGETS],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "ENGINE": ENGINE or ""},
            timeout=BUILD_TIMEOUT_S,
        )
    text = log.read_text(errors="replace")
    assert result.returncode == 0, f"image build failed (log {log}):\n{text[-4000:]}"
    for target in TARGETS:
        assert f"built {image(target)}" in text, f"{target} not built:\n{text[-2000:]}"
    return {"build_s": round(time.monotonic() - started, 1)}


def test_every_target_is_built_with_its_entry_point_user_and_health_check(built_images) -> None:
    for key in SERVICES:
        config = image_config(key)
        assert config["Entrypoint"] == ["couturier", "serve"] and config["Cmd"] == [key], config
        assert config["User"] == "10001:10001" and config["WorkingDir"] == "/var/lib/couturier"
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env[f"COUTURIER_{key.upper()}_HOST"] == "0.0.0.0"
        health = config.get("Healthcheck") or {}
        assert health.get("Test") == ["CMD-SHELL", f'couturier health "127.0.0.1:${{COUTURIER_{key.upper()}_PORT}}"']
        assert f"{env[f'COUTURIER_{key.upper()}_PORT']}/tcp" in config["ExposedPorts"]
    tools = image_config("tools")
    assert tools["Cmd"] == ["sleep", "infinity"] and not tools.get("Entrypoint")
    assert tools["User"] == "10001:10001"


@pytest.mark.parametrize("target", TARGETS)
def test_images_hold_no_torch(built_images, target: str, tmp_path: Path) -> None:
    container = Container(target, f"couturier-dists-{target}-{os.getpid()}", tmp_path / "log")
    container.create()
    try:
        result = container.exec(["python", "-c", LIST_DISTRIBUTIONS])
    finally:
        container.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    dists = set(found["dists"])
    assert not dists & FORBIDDEN, f"{target} holds {sorted(dists & FORBIDDEN)}"
    assert not found["torch_importable"]
    assert found["python"].startswith("3.11.")
    assert {"couturier", "grpcio", "onnxruntime-gpu", "pymilvus", "milvus-lite", "tokenizers"} <= dists
    assert ("onnx" in dists) == (target == "tools"), "only the tools image carries onnx"


def wait_serving(container: Container, address: str, deadline_s: float) -> None:
    """Poll the service's gRPC health from the host until SERVING; fail early when its process ends."""
    from couturier.services.client import wait_until_serving

    if container.serving_after_s is not None:
        return
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        assert container.process is not None
        if container.process.poll() is not None:
            pytest.fail(f"{container.target} exited ({container.process.returncode}):\n{container.log_tail()}")
        try:
            asyncio.run(wait_until_serving(address, timeout_s=min(3.0, max(0.1, deadline - time.monotonic()))))
            container.serving_after_s = round(time.monotonic() - container.started_at, 1)
            return
        except TimeoutError as exc:
            last = str(exc)
    pytest.fail(f"{container.target} at {address} not SERVING after {deadline_s} s ({last}):\n{container.log_tail()}")


@pytest.fixture
def service_containers(built_images, trained_models: TrainedModels, tmp_path: Path) -> Iterator[dict[str, Container]]:
    """The four service images, each started from its entry point on a free host port (host network),
    the models read-only at /models (in-process onnxruntime), milvus-lite files and product images in
    the container's own home. Scoring, latent and retrieval first, then the orchestrator wired to them."""
    ports = {key: free_port() for key in SERVICES}
    containers: dict[str, Container] = {}
    try:
        for key in SERVICES:
            prefix = f"COUTURIER_{key.upper()}_"
            env = {prefix + "PORT": str(ports[key]), prefix + "HEALTH_INTERVAL_S": "0.5"}
            mounts: list[tuple[Path, str]] = []
            if key != "orchestrator":
                env[prefix + "INFERENCE_BACKEND"] = "onnxruntime"
                env[prefix + "MODEL_REPOSITORY"] = "/models"
                mounts.append((trained_models.repo_dir, "/models"))
            if key == "scoring":
                env[prefix + "USER_VECTORS_DIR"] = "/user_vectors"
                mounts.append((trained_models.user_vectors_dir, "/user_vectors"))
            if key == "retrieval":
                env[prefix + "TOKENIZER_JSON"] = "/models/text_encoder/tokenizer.json"
            if key == "orchestrator":
                for other in ("scoring", "latent", "retrieval"):
                    env[f"{prefix}{other.upper()}_TARGET"] = f"127.0.0.1:{ports[other]}"
            container = Container(key, f"couturier-serve-{key}-{os.getpid()}", tmp_path / f"{key}.log", mounts, env)
            container.create()
            containers[key] = container
            container.start(image_config(key))
            if key == "retrieval":  # the orchestrator follows its downstream services' health
                for started in ("scoring", "latent", "retrieval"):
                    wait_serving(containers[started], f"127.0.0.1:{ports[started]}", SERVING_DEADLINE_S)
        wait_serving(containers["orchestrator"], f"127.0.0.1:{ports['orchestrator']}", SERVING_DEADLINE_S)
        yield containers
    finally:
        for container in reversed(list(containers.values())):
            container.stop()


def test_each_service_container_answers_serving(service_containers: dict[str, Container]) -> None:
    for key, container in service_containers.items():
        port = container.env[f"COUTURIER_{key.upper()}_PORT"]
        # the host's `couturier health`, the command the acceptance names
        host = subprocess.run(
            [str(Path(sys.executable).with_name("couturier")), "health", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert host.returncode == 0 and host.stdout.strip() == "SERVING", (key, host.stdout, host.stderr)
        # the image's own HEALTHCHECK command, run inside the image (its port variable is set to ours)
        test = image_config(key)["Healthcheck"]["Test"]
        assert test[0] == "CMD-SHELL"
        inside = container.exec(["sh", "-c", test[1]])
        assert inside.returncode == 0 and inside.stdout.strip() == "SERVING", (key, inside.stdout, inside.stderr)
        # the service logs JSON (the image's LOG_FORMAT) and says it started on our port
        started = [
            json.loads(line)
            for line in container.log_text().splitlines()
            if line.startswith("{") and '"service started"' in line
        ]
        assert started and started[-1]["address"] == f"0.0.0.0:{port}", container.log_tail()
    print("SERVING after (s):", {key: c.serving_after_s for key, c in service_containers.items()})
