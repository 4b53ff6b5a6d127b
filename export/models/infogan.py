"""InfoGAN (Chen et al. 2016) at catalogue resolution, used as an unsupervised retrieval encoder.

Following Ay et al. (Firat Univ.), the discriminator is trained WITHOUT labels: one categorical
latent code (10 values), a few continuous codes and noise drive the generator; the discriminator
shares a convolutional trunk between the real/fake head and the Q head that recovers the codes.
The retrieval embedding is the trunk's feature map, average-pooled and L2-normalised
(:class:`RetrievalEncoder`, ONNX-exportable: Conv2d, BatchNorm (eval), LeakyReLU, pooling).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class InfoGANConfig:
    """Architecture of the InfoGAN; ``image_size`` must be 2**k with k >= 3."""

    image_size: int = 32
    noise_dim: int = 62
    n_categories: int = 10
    n_continuous: int = 2
    g_channels: tuple[int, ...] = (128, 64, 32)  # decoder widths, coarse -> fine
    d_channels: tuple[int, ...] = (32, 64, 128)  # trunk widths, fine -> coarse
    q_hidden: int = 128
    embed_grid: int = 2  # trunk map pooled to embed_grid x embed_grid before flattening

    @property
    def latent_dim(self) -> int:
        return self.noise_dim + self.n_categories + self.n_continuous

    @property
    def embed_dim(self) -> int:
        return self.d_channels[-1] * self.embed_grid**2 + self.d_channels[-2]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> InfoGANConfig:
        data = dict(data)
        for key in ("g_channels", "d_channels"):
            data[key] = tuple(data[key])
        return cls(**data)


def _n_up(cfg: InfoGANConfig, widths: tuple[int, ...]) -> int:
    base = cfg.image_size // 2 ** len(widths)
    if base < 2 or base * 2 ** len(widths) != cfg.image_size:
        raise ValueError(f"image_size {cfg.image_size} does not fit {len(widths)} stride-2 stages")
    return base


class Generator(nn.Module):
    """Latent (noise | one-hot category | continuous) -> RGB image in [-1, 1]."""

    def __init__(self, cfg: InfoGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.base = _n_up(cfg, cfg.g_channels)
        c0 = cfg.g_channels[0]
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, c0 * self.base**2, bias=False), nn.BatchNorm1d(c0 * self.base**2), nn.ReLU(True)
        )
        layers: list[nn.Module] = []
        widths = list(cfg.g_channels)
        for cin, cout in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.fc(latent).view(latent.shape[0], self.cfg.g_channels[0], self.base, self.base)
        return self.net(h)


class Trunk(nn.Module):
    """Shared discriminator trunk: stride-2 convs; returns the last two feature maps."""

    def __init__(self, cfg: InfoGANConfig) -> None:
        super().__init__()
        _n_up(cfg, cfg.d_channels)
        blocks: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(cfg.d_channels):
            norm: nn.Module = nn.Identity() if i == 0 else nn.BatchNorm2d(cout)
            blocks.append(nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=i == 0), norm, nn.LeakyReLU(0.2, True)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats[-2], feats[-1]


class Discriminator(nn.Module):
    """Trunk + real/fake logit head + Q head (category logits, continuous-code means)."""

    def __init__(self, cfg: InfoGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = Trunk(cfg)
        final = cfg.d_channels[-1] * (cfg.image_size // 2 ** len(cfg.d_channels)) ** 2
        self.d_head = nn.Linear(final, 1)
        self.q_head = nn.Sequential(
            nn.Linear(final, cfg.q_hidden, bias=False),
            nn.BatchNorm1d(cfg.q_hidden),
            nn.LeakyReLU(0.2, True),
            nn.Linear(cfg.q_hidden, cfg.n_categories + cfg.n_continuous),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (real/fake logit (N,), category logits (N,C), continuous means (N,K))."""
        _, h = self.trunk(x)
        flat = h.flatten(1)
        q = self.q_head(flat)
        return self.d_head(flat).squeeze(1), q[:, : self.cfg.n_categories], q[:, self.cfg.n_categories :]


class RetrievalEncoder(nn.Module):
    """Image (N,3,S,S) in [-1,1] -> L2-normalised embedding (N, cfg.embed_dim) from D's trunk.

    Embedding = [ L2(avgpool_g(last map)) , L2(global avgpool(previous map)) ] / sqrt(2): the
    last map keeps coarse layout (shape), the earlier one carries colour and texture statistics.
    """

    def __init__(self, trunk: Trunk, cfg: InfoGANConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.grid = cfg.embed_grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev, last = self.trunk(x)
        a = F.normalize(F.adaptive_avg_pool2d(last, self.grid).flatten(1), dim=1)
        b = F.normalize(prev.mean(dim=(2, 3)), dim=1)
        return F.normalize(torch.cat([a, b], dim=1), dim=1)


@dataclass
class InfoGAN:
    """The trained pair plus its config."""

    cfg: InfoGANConfig
    generator: Generator
    discriminator: Discriminator
    extras: dict = field(default_factory=dict)

    def encoder(self) -> RetrievalEncoder:
        """Frozen eval-mode retrieval encoder sharing the discriminator's trunk weights."""
        enc = RetrievalEncoder(self.discriminator.trunk, self.cfg).eval()
        for p in enc.parameters():
            p.requires_grad_(False)
        return enc


def build_infogan(cfg: InfoGANConfig) -> InfoGAN:
    """Fresh generator + discriminator with DCGAN-style N(0, 0.02) init."""
    gan = InfoGAN(cfg, Generator(cfg), Discriminator(cfg))
    for module in (gan.generator, gan.discriminator):
        module.apply(_dcgan_init)
    return gan


def _dcgan_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def sample_latent(
    cfg: InfoGANConfig,
    n: int,
    gen: torch.Generator | None = None,
    categories: torch.Tensor | None = None,
    continuous: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (latent (n, latent_dim), category index (n,), continuous codes (n, K) in U(-1,1))."""
    noise = torch.randn(n, cfg.noise_dim, generator=gen)
    if categories is None:
        categories = torch.randint(0, cfg.n_categories, (n,), generator=gen)
    if continuous is None:
        continuous = torch.rand(n, cfg.n_continuous, generator=gen) * 2 - 1
    onehot = F.one_hot(categories, cfg.n_categories).float()
    latent = torch.cat([noise, onehot, continuous], dim=1)
    return latent.to(device), categories.to(device), continuous.to(device)
