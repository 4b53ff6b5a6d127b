"""The services this distribution can run, by short name."""

from __future__ import annotations

from collections.abc import Callable

from couturier.services.common.config import ServerSettings, load_settings
from couturier.services.common.server import ServiceDefinition, ServiceHost

SERVICE_KEYS = ("scoring", "latent", "retrieval", "orchestrator")


def _builder(key: str) -> Callable[[ServerSettings], ServiceDefinition]:
    if key == "scoring":
        from couturier.services.scoring.service import build
    elif key == "latent":
        from couturier.services.latent.service import build
    elif key == "retrieval":
        from couturier.services.retrieval.service import build
    elif key == "orchestrator":
        from couturier.services.orchestrator.service import build
    else:
        raise KeyError(key)
    return build  # type: ignore[return-value]


def make_host(key: str, settings: ServerSettings | None = None, **overrides: object) -> ServiceHost:
    """A ServiceHost for ``key`` with settings from the environment plus overrides."""
    resolved = settings if settings is not None else load_settings(key, **overrides)
    return ServiceHost(_builder(key)(resolved), resolved)
