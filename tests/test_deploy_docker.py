"""Docker images and the compose stack, checked statically (CI has no Docker engine): Dockerfiles are
parsed line by line, compose.yaml as YAML, and both are held against the services' settings classes,
the model names and pyproject's extras (serving images must not contain torch)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from couturier.services.common.config import SETTINGS_BY_SERVICE
from couturier.services.common.models import ALL_MODELS

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SERVICE_UID = "10001"
#: distributions a serving image must never contain (torch and what only the export extra needs)
FORBIDDEN = {"torch", "torchvision", "sentence-transformers", "onnxscript"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.all(instruction)
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARGs, stages by name): continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE)
            assert match, f"{path}: every stage is named: {line}"
            current = Stage(match[2], match[1])
            stages[current.name] = current
        elif current is None:
            assert instruction == "ARG", f"{path}: {instruction} before the first FROM"
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        else:
            current.instructions.append((instruction, rest.strip()))
    return args, stages


def resolved(stages: dict[str, Stage], name: str, instruction: str) -> str | None:
    """The effective value of an inherited instruction (USER, ENTRYPOINT, CMD) for a stage."""
    stage = stages[name]
    value = stage.last(instruction)
    if value is not None:
        return value
    return resolved(stages, stage.base, instruction) if stage.base in stages else None


def build_sources(stages: dict[str, Stage]) -> set[str]:
    """What the build stage copies from the context (COPY sources, trailing slashes dropped)."""
    return {src.rstrip("/") for line in stages["build"].all("COPY") for src in line.split()[:-1]}


def stage_env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    stage = stages[name]
    env = stage_env(stages, stage.base) if stage.base in stages else {}
    for line in stage.all("ENV"):
        env.update(dict(item.split("=", 1) for item in line.split()))
    return env


@pytest.fixture(scope="module")
def service_dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile(DOCKER / "service.Dockerfile")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def default_port(key: str) -> int:
    return SETTINGS_BY_SERVICE[key].model_fields["port"].default


def assert_settings_env(key: str, env: dict[str, str], where: str) -> None:
    prefix = f"COUTURIER_{key.upper()}_"
    fields = SETTINGS_BY_SERVICE[key].model_fields
    for name in env:
        if name.startswith("COUTURIER_"):
            assert name.startswith(prefix) and name[len(prefix) :].lower() in fields, (
                f"{where}: {name} is no {key} setting"
            )


# -- service image -----------------------------------------------------------------------------------


def test_service_image_builds_a_wheel_then_installs_only_the_serving_extra(service_dockerfile) -> None:
    args, stages = service_dockerfile
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"]), args
    build, runtime = stages["build"], stages["runtime"]
    assert build.base == runtime.base == "${PYTHON_IMAGE}"
    assert any("pip wheel" in run and '".[serving]"' in run for run in build.all("RUN"))
    install = [run for run in runtime.all("RUN") if "pip install" in run]
    assert (
        len(install) == 1 and '"couturier[serving]"' in install[0] and "--no-index --find-links /wheels" in install[0]
    )
    assert "from=build" in install[0], "the wheels come from the build stage"
    assert build_sources(stages) == {"pyproject.toml", "setup.py", "README.md", "protos", "services", "export"}
    for stage in stages.values():
        for run in stage.all("RUN"):
            installs = run.split("&&")[0]  # what follows is the no-torch check itself
            assert "torch" not in installs and "[export]" not in installs and "[all]" not in installs, run
    assert "find_spec('torch')" in install[0], "the runtime install fails the build when torch got in"


def test_every_service_has_a_stage_with_its_key_port_and_health_check(service_dockerfile) -> None:
    _, stages = service_dockerfile
    for key in SETTINGS_BY_SERVICE:
        stage = stages[key]
        assert stage.base == "runtime"
        assert json.loads(resolved(stages, key, "ENTRYPOINT")) == ["couturier", "serve"]
        assert json.loads(stage.last("CMD")) == [key]
        env = stage_env(stages, key)
        assert_settings_env(key, env, f"stage {key}")
        prefix = f"COUTURIER_{key.upper()}_"
        assert env[prefix + "HOST"] == "0.0.0.0" and env[prefix + "LOG_FORMAT"] == "json"
        assert int(env[prefix + "PORT"]) == default_port(key)
        assert stage.all("EXPOSE") == [str(default_port(key))]
        health = stage.last("HEALTHCHECK")
        assert health and health.split("CMD", 1)[1].strip() == f'couturier health "127.0.0.1:${{{prefix}PORT}}"'
        assert resolved(stages, key, "USER") == f"{SERVICE_UID}:{SERVICE_UID}"
    assert list(stages)[-1] == "orchestrator", "a build without --target gives the orchestrator"


def test_runtime_user_is_created_non_root_and_matches_kubernetes(service_dockerfile) -> None:
    _, stages = service_dockerfile
    useradd = " ".join(stages["runtime"].all("RUN"))
    assert f"--uid {SERVICE_UID}" in useradd and f"--gid {SERVICE_UID}" in useradd
    tools = stages["tools"]
    assert tools.all("USER")[-1] == f"{SERVICE_UID}:{SERVICE_UID}", "tools drops root again"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    onnx_pin = next(r for r in pyproject["project"]["optional-dependencies"]["export"] if r.startswith("onnx=="))
    assert any(line == f"ONNX_VERSION={onnx_pin.split('==')[1]}" for line in tools.all("ARG"))
    k8s_uids = set(re.findall(r"runAsUser: (\d+)", "".join(p.read_text() for p in (ROOT / "k8s").rglob("*.yaml"))))
    assert k8s_uids == {SERVICE_UID, "1000"}


def serving_closure(pyproject: dict) -> set[str]:
    """Requirement strings of the serving extra with couturier[...] self-references expanded."""
    extras = pyproject["project"]["optional-dependencies"]
    out: set[str] = set(pyproject["project"]["dependencies"])
    todo, seen = ["serving"], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in extras[extra]:
            parsed = Requirement(req)
            if parsed.name == "couturier":
                todo.extend(parsed.extras)
            else:
                out.add(req)
    assert "export" not in seen and "all" not in seen
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_serving_extra_excludes_torch_transitively() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    direct = serving_closure(pyproject)
    assert not {normalise(Requirement(r).name) for r in direct} & FORBIDDEN
    # walk the installed metadata (this venv holds every extra) from the serving requirements down
    todo = [Requirement(r) for r in direct]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = normalise(req.name)
        if name in seen:
            continue
        seen.add(name)
        assert name not in FORBIDDEN, f"the serving install pulls {name}"
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (a marker excluded it); nothing below it to walk
        for extra in req.extras or {""}:
            for sub in dist.requires or []:
                child = Requirement(sub)
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    todo.append(child)
    assert {"tritonclient", "pymilvus", "onnxruntime-gpu", "grpcio"} <= seen


def test_the_couturier_command_runs_without_torch_or_onnx() -> None:
    """The `couturier` command of a serving image (no export extra): it assembles every subcommand,
    offline ones included, without importing torch or onnx, and builds every service."""
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'onnxscript', 'sentence_transformers'):
            raise ImportError('blocked in a serving image: ' + name)
sys.meta_path.insert(0, Block())
from couturier.services import cli, registry
for key in registry.SERVICE_KEYS:
    registry._builder(key)
sys.argv = ['couturier', '--help']
cli.main()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    for command in ("serve", "health", "status", "train", "export", "demo", "bench", "triton", "data", "index"):
        assert f" {command} " in result.stdout, command
    assert "unavailable" not in result.stderr


# -- Triton image ------------------------------------------------------------------------------------


def test_triton_image_is_ngc_with_explicit_control_of_every_model() -> None:
    args, stages = parse_dockerfile(DOCKER / "triton.Dockerfile")
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", args["TRITON_IMAGE"]), args
    triton = stages["triton"]
    assert triton.base == "${TRITON_IMAGE}" and triton.last("USER") == "triton-server"
    cmd = json.loads(triton.last("CMD"))
    assert cmd[0] == "tritonserver" and "--model-repository=/models" in cmd and "--model-control-mode=explicit" in cmd
    assert [c.removeprefix("--load-model=") for c in cmd if c.startswith("--load-model=")] == list(ALL_MODELS)
    ports = {c.split("=")[0]: c.split("=")[1] for c in cmd if c.endswith(("8000", "8001", "8002"))}
    assert ports == {"--http-port": "8000", "--grpc-port": "8001", "--metrics-port": "8002"}
    assert triton.all("EXPOSE") == ["8000 8001 8002"]
    assert "/v2/health/ready" in triton.last("HEALTHCHECK")
    baked = stages["triton-baked"]
    assert baked.base == "triton" and baked.last("COPY").endswith("${MODEL_REPOSITORY}/ /models/")
    assert "MODEL_REPOSITORY=var/model_repository" in baked.all("ARG")


def test_dockerignore_keeps_sources_and_drops_heavy_state(service_dockerfile) -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    for heavy in (".git", ".venv", "var", "runs"):
        assert heavy in patterns
    assert "!var/model_repository" in patterns  # the triton-baked target copies it
    _, stages = service_dockerfile
    for source in build_sources(stages):
        assert source not in patterns, f".dockerignore drops {source}, which the image copies"


# -- compose -----------------------------------------------------------------------------------------


def test_compose_runs_each_service_with_real_settings(compose: dict, service_dockerfile) -> None:
    _, stages = service_dockerfile
    services = compose["services"]
    assert set(services) == {"etcd", "minio", "milvus", "triton", *SETTINGS_BY_SERVICE}
    for key in SETTINGS_BY_SERVICE:
        svc = services[key]
        assert svc["build"] == {"context": "..", "dockerfile": "docker/service.Dockerfile", "target": key}
        assert svc["command"] == [key] == json.loads(stages[key].last("CMD"))
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert_settings_env(key, env, f"compose {key}")
        effective = {**stage_env(stages, key), **env}
        assert int(effective[f"COUTURIER_{key.upper()}_PORT"]) == default_port(key)
        if key == "orchestrator":
            assert svc["ports"] == ["${ORCHESTRATOR_PORT:-50050}:50050"]
        else:
            assert "ports" not in svc, f"{key} must not be published"
    for name in ("etcd", "minio", "milvus", "triton"):
        assert "ports" not in services[name], f"{name} must not be published"


def test_compose_targets_name_compose_services_and_ports(compose: dict) -> None:
    services = compose["services"]
    triton_cmd = json.loads(parse_dockerfile(DOCKER / "triton.Dockerfile")[1]["triton"].last("CMD"))
    ports = {key: default_port(key) for key in SETTINGS_BY_SERVICE}
    ports["triton"] = int(next(c for c in triton_cmd if c.startswith("--grpc-port=")).split("=")[1])
    ports["milvus"] = 19530
    checked = 0
    for key in SETTINGS_BY_SERVICE:
        svc = services[key]
        for name, value in svc["environment"].items():
            field = name.removeprefix(f"COUTURIER_{key.upper()}_").lower()
            if field.endswith("_target") or field in ("triton_url", "milvus_uri"):
                host, port = str(value).removeprefix("http://").split(":")
                assert host in services and int(port) == ports[host], f"{key}: {name}={value}"
                assert svc["depends_on"][host] == {"condition": "service_healthy"}, f"{key} must wait for {host}"
                checked += 1
    assert checked == 8  # latent has triton_url only: it calls no other couturier service
    assert set(services["latent"]["depends_on"]) == {"triton"}
    assert services["retrieval"]["environment"]["COUTURIER_RETRIEVAL_TOKENIZER_JSON"].startswith("/models/")
    assert any(v.endswith(":/models:ro") for v in services["retrieval"]["volumes"])
    assert any(v.endswith(":/models:ro") for v in services["triton"]["volumes"])
    assert services["milvus"]["depends_on"] == {
        "etcd": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
    }


def test_compose_gpu_override_reserves_nvidia_for_triton() -> None:
    override = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    assert set(override["services"]) == {"triton"}
    (device,) = override["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
