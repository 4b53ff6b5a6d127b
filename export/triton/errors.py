"""Errors of the model-serving layer; every message says what to change."""

from __future__ import annotations

from couturier.services.common.model_repository import RepositoryError, TritonError

__all__ = [
    "EnvironmentSetupError",
    "ModelControlError",
    "RepositoryError",
    "ServerStartError",
    "SignatureError",
    "TritonError",
]


class SignatureError(TritonError):
    """An ONNX file's inputs/outputs cannot be served (no dynamic batch axis, unsupported type)."""


class EnvironmentSetupError(TritonError):
    """The Triton environment (its virtualenv or backend directory) cannot be created or is broken."""


class ServerStartError(TritonError):
    """tritonserver exited or did not become ready in time (it was killed)."""


class ModelControlError(TritonError):
    """Loading, unloading or swapping a model version failed."""
