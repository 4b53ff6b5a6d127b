"""Triton's model control restricted to a header only the rollout tooling sends (docs/security.md): the real
local tritonserver started with ``--grpc-restricted-protocol`` / ``--http-restricted-api`` for
``model-repository``; inference and model config (what the services use) stay open."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest

from couturier.export.triton.control import ModelControl, parse_control_header
from couturier.export.triton.environment import default_home
from couturier.export.triton.errors import ModelControlError
from couturier.export.triton.local_server import LocalTriton
from couturier.export.triton.repository import publish_model
from couturier.services.common.inference import TritonBackend
from support.onnx_models import linear_model

ENV_DIR = default_home() / "env"


def test_control_header_is_checked() -> None:
    assert parse_control_header("couturier-model-control=abc123") == ("couturier-model-control", "abc123")
    for bad in ("no-equals", "Upper=x", "key=", "key=has space", "key=a,b"):
        with pytest.raises(ModelControlError, match="COUTURIER_TRITON_CONTROL_HEADER"):
            parse_control_header(bad)


@pytest.mark.slow
async def test_model_control_without_the_header_is_refused(tmp_path: Path) -> None:
    if not (ENV_DIR / "bin").is_dir():
        pytest.skip(f"no local Triton environment at {ENV_DIR} (couturier triton setup)")
    repo = tmp_path / "repo"
    publish_model(repo, "lin", linear_model(tmp_path / "lin.onnx", seed=0))
    header = ("couturier-model-control", secrets.token_urlsafe(24))
    with LocalTriton(tmp_path / "home", env_dir=ENV_DIR, ready_timeout_s=60, control_header=header) as server:
        server.start(repo)
        server.load("lin")  # LocalTriton's control sends the header
        with ModelControl(server.grpc_url, header=("couturier-model-control", "guessed")) as intruder:
            with pytest.raises(ModelControlError, match="unloading 'lin' failed"):
                intruder.unload("lin")
            with pytest.raises(ModelControlError, match="repository index"):
                intruder.index()
        backend = TritonBackend(server.grpc_url, timeout_s=10.0)  # no header: inference stays open
        try:
            out = await backend.infer("lin", {"x": np.ones((1, 8), np.float32)})
            assert out["y"].shape == (1, 4)
        finally:
            await backend.close()
        assert server.control.ready_versions("lin") == [1]
        server.unload("lin")
        assert server.control.ready_versions("lin") == []
