"""The services this distribution can run, by short name."""

from __future__ import annotations

from collections.abc import Callable

from couturier.services.common.config import ServerSettings, load_settings
from couturier.services.common.server import ServiceDefinition, ServiceHost

SERVICE_KEYS = ("scoring", "latent", "retrieval", "orchestrator")


def _builder(key: str) -> Callable[..., ServiceDefinition]:
    """The ``build(settings)`` of service ``key``, imported only when asked for (one service per process)."""
    if key == "scoring":
        from couturier.services.scoring.service import build as scoring

        return scoring
    if key == "latent":
        from couturier.services.latent.service import build as latent

        return latent
    if key == "retrieval":
        from couturier.services.retrieval.service import build as retrieval

        return retrieval
    if key == "orchestrator":
        from couturier.services.orchestrator.service import build as orchestrator

        return orchestrator
    raise KeyError(key)


def make_host(key: str, settings: ServerSettings | None = None, **overrides: object) -> ServiceHost:
    """A ServiceHost for ``key`` with settings from the environment plus overrides."""
    resolved = settings if settings is not None else load_settings(key, **overrides)
    return ServiceHost(_builder(key)(resolved), resolved)
