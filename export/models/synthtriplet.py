"""SynthTriplet GAN (Tautkute et al.): reference image + text change -> synthetic query image.

The query generator Gq is a small U-Net whose bottleneck and decoder stages are conditioned on the
384-d sentence embedding (FiLM: per-channel scale and shift, plus the projected text broadcast
over the bottleneck). The critic scores (image, text) pairs (projection conditioning) and is
trained with WGAN-GP. The triplet loss lives in a frozen retrieval embedding space (the InfoGAN
discriminator trunk): anchor = E(Gq(ref, text)), positive = E(target), negative = E(ref).
All ops are ONNX-exportable (Conv, ConvTranspose, BatchNorm eval, LeakyReLU, Linear, Concat).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SynthTripletConfig:
    """Architecture of Gq and the critic."""

    image_size: int = 32
    text_dim: int = 384
    text_hidden: int = 256
    channels: tuple[int, ...] = (32, 64, 128)  # encoder widths, fine -> coarse
    critic_channels: tuple[int, ...] = (32, 64, 128)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SynthTripletConfig:
        data = dict(data)
        for key in ("channels", "critic_channels"):
            data[key] = tuple(data[key])
        return cls(**data)


class FiLM(nn.Module):
    """h * (1 + gamma(t)) + beta(t), per channel."""

    def __init__(self, text_hidden: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(text_hidden, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(t).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return h * (1.0 + gamma) + beta


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm),
        nn.BatchNorm2d(cout) if norm else nn.Identity(),
        nn.LeakyReLU(0.2, True),
    )


class QueryGenerator(nn.Module):
    """Gq(reference (N,3,S,S) in [-1,1], text (N,384)) -> synthetic image (N,3,S,S) in [-1,1]."""

    def __init__(self, cfg: SynthTripletConfig) -> None:
        super().__init__()
        ch = list(cfg.channels)
        if cfg.image_size % 2 ** len(ch):
            raise ValueError(f"image_size {cfg.image_size} not divisible by 2**{len(ch)}")
        self.text = nn.Sequential(nn.Linear(cfg.text_dim, cfg.text_hidden), nn.LeakyReLU(0.2, True))
        self.down = nn.ModuleList(_down(cin, cout, norm=i > 0) for i, (cin, cout) in enumerate(zip([3, *ch], ch)))
        self.text_map = nn.Linear(cfg.text_hidden, ch[-1])
        self.bottleneck = nn.Sequential(
            nn.Conv2d(2 * ch[-1], ch[-1], 3, 1, 1, bias=False), nn.BatchNorm2d(ch[-1]), nn.ReLU(True)
        )
        self.film = nn.ModuleList(
            [FiLM(cfg.text_hidden, ch[-1])] + [FiLM(cfg.text_hidden, c) for c in reversed(ch[:-1])]
        )
        ups: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(reversed(ch), list(reversed(ch[:-1])))):
            width = cin if i == 0 else 2 * cin  # after the first stage the skip is concatenated
            ups.append(
                nn.Sequential(nn.ConvTranspose2d(width, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))
            )
        self.up = nn.ModuleList(ups)
        self.out = nn.Sequential(nn.ConvTranspose2d(2 * ch[0], 3, 4, 2, 1), nn.Tanh())

    def forward(self, reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = self.text(text)
        skips = []
        h = reference
        for block in self.down:
            h = block(h)
            skips.append(h)
        tm = self.text_map(t).unsqueeze(-1).unsqueeze(-1).expand(-1, -1, h.shape[2], h.shape[3])
        h = self.film[0](self.bottleneck(torch.cat([h, tm], dim=1)), t)
        for i, block in enumerate(self.up):
            if i > 0:
                h = torch.cat([h, skips[-1 - i]], dim=1)
            h = self.film[i + 1](block(h), t)
        return self.out(torch.cat([h, skips[0]], dim=1))


class Critic(nn.Module):
    """WGAN critic on (image, text): f(x) + <W t, phi(x)> (projection conditioning), no batch norm."""

    def __init__(self, cfg: SynthTripletConfig) -> None:
        super().__init__()
        ch = list(cfg.critic_channels)
        self.features = nn.Sequential(*(_down(cin, cout, norm=False) for cin, cout in zip([3, *ch], ch)))
        feat = ch[-1] * (cfg.image_size // 2 ** len(ch)) ** 2
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(feat, 256), nn.LeakyReLU(0.2, True))
        self.head = nn.Linear(256, 1)
        self.text_proj = nn.Linear(cfg.text_dim, 256, bias=False)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.features(image))
        return self.head(h).squeeze(1) + (self.text_proj(text) * h).sum(1)


def gradient_penalty(
    critic: Critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    text: torch.Tensor,
    gp_lambda: float = 10.0,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): lambda * E[(||grad_x critic(x_hat)||_2 - 1)^2] on interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(x_hat, text)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return gp_lambda * ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """mean(max(0, ||a - p|| - ||a - n|| + margin)) with Euclidean distances."""
    return F.relu((anchor - positive).norm(dim=1) - (anchor - negative).norm(dim=1) + margin).mean()
