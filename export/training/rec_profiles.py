"""Training profiles for the recommender (DVBPR) and the conditional GAN.

``demo``: a shared 2-core CPU, a few minutes each. ``full``: a GPU (``use_cuda``), longer and wider.
Epoch/step counts define a run (a seed reproduces it); ``max_seconds`` is a safety cap for shared
machines, recorded in the metrics when it fires.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

PROFILES = ("demo", "full")


@dataclass(frozen=True)
class DvbprProfile:
    """DVBPR optimisation. Official code: Adam 1e-4, K=100; the CPU demo uses 1e-3 (and K=64) to
    converge in minutes."""

    name: str
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5  # L2 on the CNN (Adam weight decay)
    lambda_theta: float = 1e-3  # L2 on the user vectors of the batch
    k: int = 64
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 256
    n_negatives: int = 100
    bprmf_epochs: int = 60
    seed: int = 0
    use_cuda: bool = False
    threads: int = 2
    max_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GanProfile:
    """Conditional LSGAN optimisation: DCGAN's Adam(2e-4, beta1 0.5)."""

    name: str
    steps: int
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    z_dim: int = 100
    g_channels: tuple[int, ...] = (128, 64, 32)
    d_channels: tuple[int, ...] = (32, 64, 128)
    seed: int = 0
    use_cuda: bool = False
    threads: int = 2
    max_seconds: float | None = None
    log_every: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DVBPR = {
    # threads=1: on the shared 2-core machine one thread measured ~5x faster per batch than two
    "demo": DvbprProfile(name="demo", epochs=12, threads=1, max_seconds=300.0),
    "full": DvbprProfile(name="full", epochs=60, batch_size=256, lr=1e-4, k=100, channels=(64, 128, 256, 256),
                         hidden=1024, bprmf_epochs=60, use_cuda=True, threads=8),
}
_GAN = {
    "demo": GanProfile(name="demo", steps=1500, threads=1, max_seconds=360.0),
    "full": GanProfile(name="full", steps=40000, batch_size=128, g_channels=(512, 256, 128, 64),
                       d_channels=(64, 128, 256, 512), use_cuda=True, threads=8, log_every=50),
}


def dvbpr_profile(name: str, **overrides: Any) -> DvbprProfile:
    """The named DVBPR profile with field overrides (e.g. ``epochs=1`` for tests)."""
    return replace(_DVBPR[_check(name)], **overrides)


def gan_profile(name: str, **overrides: Any) -> GanProfile:
    """The named GAN profile with field overrides."""
    return replace(_GAN[_check(name)], **overrides)


def _check(name: str) -> str:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES}")
    return name
