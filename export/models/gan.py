"""Category-conditioned DCGAN with the LSGAN loss (Kang et al. 2017, design by preference maximisation).

* ``Generator(z, onehot) -> image`` in [-1, 1] at 32x32 (default) or 64x64: z and the category
  one-hot are concatenated to a (B, z+C, 1, 1) map, then ConvTranspose2d 4x4 (to 4x4) and
  ``log2(S/4)`` stride-2 ConvTranspose2d up-samplings with BatchNorm2d + ReLU, Tanh at the end.
* ``Discriminator(image, onehot) -> realism (B,)``: the one-hot is broadcast to C constant planes
  concatenated with the image; Conv2d stride 2 + (BatchNorm2d) + LeakyReLU(0.2), then Linear.
  No sigmoid: LSGAN regresses real -> 1, fake -> 0.
* z: 100-d as in the paper text (Kang's code: 256-d); a parameter. Kang's preference maximisation
  keeps D: objective = mean(theta.Phi(G(z))) - w * (D(G(z)) - 1)^2.

Generator ops (ConvTranspose2d, eval BatchNorm2d, ReLU, Tanh) and discriminator ops (Conv2d,
LeakyReLU, eval BatchNorm2d, Linear) are all handled by the gradient exporter.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GanConfig:
    """Architecture of the conditional GAN."""

    image_size: int = 32
    z_dim: int = 100
    n_categories: int = 6
    g_channels: tuple[int, ...] = (128, 64, 32)  # widths at 4x4, 8x8, 16x16 (+32x32 for 64 px)
    d_channels: tuple[int, ...] = (32, 64, 128)  # widths at S/2, S/4, S/8 (+S/16 for 64 px)

    def __post_init__(self) -> None:
        if self.image_size not in (32, 64):
            raise ValueError(f"image_size must be 32 or 64, got {self.image_size}")
        if len(self.g_channels) < self.n_up or len(self.d_channels) < self.n_up:
            raise ValueError(f"{self.image_size} px needs {self.n_up} generator and discriminator widths")

    @property
    def n_up(self) -> int:
        """Stride-2 layers between 4x4 and the image size."""
        return int(math.log2(self.image_size // 4))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GanConfig:
        return cls(**{**data, "g_channels": tuple(data["g_channels"]), "d_channels": tuple(data["d_channels"])})


def one_hot(categories: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) int -> (B, n) float one-hot."""
    return F.one_hot(categories.long(), n).float()


class Generator(nn.Module):
    """G(z (B,z_dim), onehot (B,C)) -> (B,3,S,S) in [-1, 1]."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.g_channels[: cfg.n_up]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.z_dim + cfg.n_categories, ch[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch[0]),
            nn.ReLU(),
        ]
        for c_in, c_out in itertools.pairwise(ch):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(ch[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        x = torch.cat([z, onehot], dim=1)
        return self.net(x.reshape(x.shape[0], x.shape[1], 1, 1))


class Discriminator(nn.Module):
    """D(image (B,3,S,S), onehot (B,C)) -> realism score (B,) (LSGAN: real ~ 1, fake ~ 0)."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.d_channels[: cfg.n_up]
        layers: list[nn.Module] = [nn.Conv2d(3 + cfg.n_categories, ch[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for c_in, c_out in itertools.pairwise(ch):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
        self.trunk = nn.Sequential(*layers)  # ends at 4x4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch[-1] * 16, 1))
        self.apply(_dcgan_init)

    def forward(self, images: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        planes = onehot.reshape(b, -1, 1, 1) * torch.ones(1, 1, h, w, dtype=images.dtype, device=images.device)
        return self.head(self.trunk(torch.cat([images, planes], dim=1))).reshape(b)


def _dcgan_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def lsgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Mao et al. LSGAN discriminator loss ``0.5 E(D(x)-1)^2 + 0.5 E D(G(z))^2`` (a=0, b=c=1)."""
    return 0.5 * ((d_real - 1.0) ** 2).mean() + 0.5 * (d_fake**2).mean()


def lsgan_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN generator loss ``0.5 E (D(G(z)) - 1)^2``."""
    return 0.5 * ((d_fake - 1.0) ** 2).mean()


def sample_z(
    n: int, z_dim: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Latent codes: uniform in [-1, 1] (the paper's tanh-bounded z)."""
    return (torch.rand(n, z_dim, generator=generator) * 2.0 - 1.0).to(device)
