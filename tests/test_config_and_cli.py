"""Settings from environment and flags, clear errors for bad config, and the CLI entry points."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from couturier.export.tools.launcher import LocalStack, free_port
from couturier.services.client import check_health, get_status, list_services, wait_until_serving
from couturier.services.common.config import SETTINGS_BY_SERVICE, load_settings
from couturier.services.common.errors import InvalidInput
from support.hosts import service_env
from support.trained import TrainedModels

runner = CliRunner()


def test_defaults_bind_loopback_with_distinct_ports() -> None:
    ports = set()
    for key in ("scoring", "latent", "retrieval", "orchestrator"):
        settings = load_settings(key)
        assert settings.host == "127.0.0.1"
        ports.add(settings.port)
    assert len(ports) == 4


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUTURIER_SCORING_PORT", "6001")
    monkeypatch.setenv("COUTURIER_SCORING_MAX_MESSAGE_BYTES", "2048")
    monkeypatch.setenv("COUTURIER_SCORING_INFERENCE_BACKEND", "triton")
    settings = load_settings("scoring")
    assert (settings.port, settings.max_message_bytes, settings.inference_backend) == (6001, 2048, "triton")
    assert load_settings("scoring", port=6002).port == 6002  # a flag beats the environment
    assert load_settings("latent").port == 50052  # other services keep their own prefix


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("COUTURIER_SCORING_PORT", "70000", "port (env COUTURIER_SCORING_PORT)"),
        ("COUTURIER_SCORING_PORT", "abc", "port (env COUTURIER_SCORING_PORT)"),
        ("COUTURIER_SCORING_LOG_LEVEL", "LOUD", "log_level (env COUTURIER_SCORING_LOG_LEVEL)"),
        ("COUTURIER_SCORING_INFERENCE_BACKEND", "tensorflow", "inference_backend"),
        ("COUTURIER_SCORING_RPC_TIMEOUT_S", "-1", "rpc_timeout_s"),
        ("COUTURIER_SCORING_HOST", " ", "host (env COUTURIER_SCORING_HOST): Value error, must not be empty"),
    ],
)
def test_bad_config_names_the_problem(monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(InvalidInput) as info:
        load_settings("scoring")
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("pins", "optimiser", "refused"),
    [
        ('{"pref_grad": "2"}', "loop", "pins pref_grad=2 but not pref_loop"),
        ('{"shift_loop": "3"}', "loop", "pins shift_loop=3 but not shift_grad"),
        ('{"inv_grad": "2", "inv_loop": "2"}', "loop", None),
        ('{"pref_grad": "2"}', "reference", None),  # the reference optimiser calls no loop model
    ],
)
def test_latent_pins_a_loop_model_and_its_gradient_model_together(
    monkeypatch: pytest.MonkeyPatch, pins: str, optimiser: str, refused: str | None
) -> None:
    monkeypatch.setenv("COUTURIER_LATENT_MODEL_VERSIONS", pins)
    monkeypatch.setenv("COUTURIER_LATENT_OPTIMISER", optimiser)
    if refused is None:
        assert load_settings("latent").model_versions == json.loads(pins)
        return
    with pytest.raises(InvalidInput, match=refused):
        load_settings("latent")


def test_only_the_orchestrator_has_downstream_targets() -> None:
    """The orchestrator is the only service that calls other services (it resolves ids for latent)."""
    targets = {
        key: sorted(f for f in cls.model_fields if f.endswith("_target")) for key, cls in SETTINGS_BY_SERVICE.items()
    }
    assert targets == {
        "scoring": [],
        "latent": [],
        "retrieval": [],
        "orchestrator": ["latent_target", "retrieval_target", "scoring_target"],
    }
    with pytest.raises(InvalidInput, match="scoring_target"):  # a stale flag is named, not ignored
        load_settings("latent", scoring_target="127.0.0.1:50051")


def test_milvus_uri_is_one_setting_with_each_service_its_own_lite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from couturier.services.common.config import RetrievalSettings, ScoringSettings, VectorStoreSettings

    for name in [n for n in os.environ if n.startswith("COUTURIER_")]:
        monkeypatch.delenv(name)
    for cls in (ScoringSettings, RetrievalSettings):  # declared once, by the shared base
        assert [c for c in cls.__mro__ if "milvus_uri" in inspect.get_annotations(c)] == [VectorStoreSettings]
    assert load_settings("scoring").milvus_uri == "var/milvus/scoring.db"  # a lite file belongs to one process
    assert load_settings("retrieval").milvus_uri == "var/milvus/retrieval.db"
    assert not hasattr(load_settings("latent"), "milvus_uri")
    monkeypatch.setenv("COUTURIER_SCORING_MILVUS_URI", "http://milvus:19530")
    monkeypatch.setenv("COUTURIER_RETRIEVAL_MILVUS_URI", "/data/retrieval.db")
    assert load_settings("scoring").milvus_uri == "http://milvus:19530"
    assert load_settings("retrieval").milvus_uri == "/data/retrieval.db"  # each service reads its own variable
    assert load_settings("retrieval", milvus_uri="http://other:19530").milvus_uri == "http://other:19530"  # flag
    monkeypatch.setenv("COUTURIER_RETRIEVAL_MILVUS_URI", "")
    assert load_settings("retrieval").milvus_uri == ""  # given empty stays empty (the store refuses it)
    monkeypatch.setenv("COUTURIER_RETRIEVAL_PRODUCT_IMAGES_DIR", "/data/images")
    assert load_settings("retrieval").product_images_dir == "/data/images"
    monkeypatch.delenv("COUTURIER_RETRIEVAL_PRODUCT_IMAGES_DIR")
    assert load_settings("retrieval").product_images_dir == "var/product_images"


def test_unknown_service_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown service 'billing'"):
        load_settings("billing")


def test_cli_serve_help_lists_services() -> None:
    from couturier.services.cli import app

    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "scoring, latent, retrieval, orchestrator, or all" in result.output


def test_cli_serve_rejects_bad_config_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "couturier.services.cli", "serve", "scoring", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "port (env COUTURIER_SCORING_PORT)" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_serve_rejects_unknown_service() -> None:
    from couturier.services.cli import app

    result = runner.invoke(app, ["serve", "billing"])
    assert result.exit_code == 2
    assert "unknown service 'billing'" in result.output


#: Health polling of the services that follow other services (they may start before those are ready).
FOLLOWER_HEALTH = {"COUTURIER_LATENT_HEALTH_INTERVAL_S": "0.2", "COUTURIER_ORCHESTRATOR_HEALTH_INTERVAL_S": "0.2"}


def test_every_service_as_its_own_process(trained_models: TrainedModels, tmp_path: Path) -> None:
    """Each service runs via `couturier serve <name>` in its own process and stops cleanly on SIGTERM."""
    env = {**service_env(trained_models, tmp_path / "work"), **FOLLOWER_HEALTH}
    with LocalStack(log_dir=tmp_path / "logs", extra_env=env) as stack:
        stack.start()
        try:
            waited = asyncio.run(stack.wait_until_serving(timeout_s=90))
        except (RuntimeError, TimeoutError):
            for key in stack.processes:
                print(f"--- {key} log ---\n{stack.log_tail(key)}")
            raise
        assert set(waited) == {"scoring", "latent", "retrieval", "orchestrator"}
        pids = {proc.process.pid for proc in stack.processes.values()}
        assert len(pids) == 4
        names = asyncio.run(list_services(stack.processes["orchestrator"].target))
        assert "couturier.v1.OrchestratorService" in names
        status = asyncio.run(get_status(stack.target("scoring")))
        assert status.settings["milvus_uri"] == str(tmp_path / "work" / "milvus" / "scoring.db")
        codes = stack.stop()
    assert codes == {"scoring": 0, "latent": 0, "retrieval": 0, "orchestrator": 0}
    assert "service stopped" in (tmp_path / "logs" / "scoring.log").read_text()


def test_serve_all_in_one_process(trained_models: TrainedModels, tmp_path: Path) -> None:
    """`couturier serve all`: the four services share one process and one event loop, wired by environment."""
    ports = {key: free_port() for key in ("scoring", "latent", "retrieval", "orchestrator")}
    env = {**service_env(trained_models, tmp_path), **FOLLOWER_HEALTH}
    env.update({f"COUTURIER_{key.upper()}_PORT": str(port) for key, port in ports.items()})
    # `serve all` wires the orchestrator to its siblings (the latent service calls no other service).
    log_path = tmp_path / "all.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "couturier.services.cli", "serve", "all"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        for key, port in ports.items():
            try:
                asyncio.run(wait_until_serving(f"127.0.0.1:{port}", timeout_s=90))
            except TimeoutError as exc:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
                pytest.fail(f"{key}: {exc}\n--- serve all log ---\n{tail}")
            assert asyncio.run(check_health(f"127.0.0.1:{port}")) == "SERVING", key
        status = asyncio.run(get_status(f"127.0.0.1:{ports['orchestrator']}"))
        assert {key: status.settings[f"{key}_target"] for key in ("scoring", "latent", "retrieval")} == {
            key: f"127.0.0.1:{ports[key]}" for key in ("scoring", "latent", "retrieval")
        }
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, log_path.read_text(errors="replace")[-4000:]


def test_cli_health_command_exit_codes() -> None:
    from couturier.services.cli import app

    result = runner.invoke(app, ["health", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 2
    assert "UNAVAILABLE" in result.output
