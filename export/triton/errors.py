"""Errors of the model-serving layer; every message says what to change."""

from __future__ import annotations


class TritonError(RuntimeError):
    """Base class of the serving-layer errors raised by ``couturier.export.triton``."""


class SignatureError(TritonError):
    """An ONNX file's inputs/outputs cannot be served (no dynamic batch axis, unsupported type)."""


class RepositoryError(TritonError):
    """The model repository is missing, malformed, or a publish would break it."""


class EnvironmentSetupError(TritonError):
    """The Triton environment (its virtualenv or backend directory) cannot be created or is broken."""


class ServerStartError(TritonError):
    """tritonserver exited or did not become ready in time (it was killed)."""


class ModelControlError(TritonError):
    """Loading, unloading or swapping a model version failed."""
