"""DVBPR (Kang, Fang, Wang, McAuley, ICDM 2017): recommendation trained end to end from pixels.

``score(u, i) = theta_u . Phi(image_i)`` where ``Phi`` is a CNN item encoder and ``theta`` holds
one K-d vector per user; trained with BPR on (user, bought item i, other item j) triples.

Paper vs official code vs this implementation (documented choice):

* Phi: the paper uses CNN-F at 224 px (5 convs + 2 fc of 4096). Here: a small CNN-F-like stack
  for 32x32 / 64x64 input in [-1, 1]: ``log2(S/4)`` blocks of Conv3x3-ReLU-MaxPool2 (ending at
  4x4), then Linear-ReLU-Linear to K. Only Conv2d, ReLU, MaxPool2d and Linear, so the gradient
  exporter (:mod:`couturier.export.grad_export`) handles it.
* K: 100 in the official code; default 64 here (demo), a parameter.
* No item bias (none in DVBPR: a new item's score comes from its image alone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Image sides the networks are built for (the profile picks one; the CPU demo 32, real photos 64, GPU 128).
IMAGE_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class DvbprConfig:
    """Architecture of a DVBPR model."""

    n_users: int
    image_size: int = 32
    k: int = 64
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 256

    def __post_init__(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {self.image_size}")
        if not self.channels:
            raise ValueError("channels needs at least one width")

    def width(self, i: int) -> int:
        """Width of conv block ``i`` (the last given width repeats for larger images)."""
        return self.channels[min(i, len(self.channels) - 1)]

    @property
    def n_blocks(self) -> int:
        """Conv blocks needed to pool ``image_size`` down to 4x4."""
        return int(math.log2(self.image_size // 4))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DvbprConfig:
        return cls(**{**data, "channels": tuple(data["channels"])})


class ItemEncoder(nn.Module):
    """Phi: (B,3,S,S) in [-1,1] -> (B,K) item embedding."""

    def __init__(self, cfg: DvbprConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 3
        for c_out in (cfg.width(i) for i in range(cfg.n_blocks)):
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * 16, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.k)
        )

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every conv block (post-pool), shallow to deep (used as perceptual features)."""
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Dvbpr(nn.Module):
    """Item encoder plus user vectors ``theta`` (U, K)."""

    def __init__(self, cfg: DvbprConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ItemEncoder(cfg)
        self.theta = nn.Parameter(torch.randn(cfg.n_users, cfg.k) * 0.01)

    def score_embeddings(self, users: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
        """Per-pair scores theta_u . v (B,) for users (B,) and item vectors (B, K)."""
        return (self.theta[users] * item_vecs).sum(dim=1)

    def forward(self, users: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """score(u_b, image_b) for each row b: (B,)."""
        return self.score_embeddings(users, self.encoder(images))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Phi of many images, in eval mode, batched: (N, K)."""
        was = self.training
        self.eval()
        dev = self.theta.device
        out = torch.cat([self.encoder(images[i : i + batch_size].to(dev)) for i in range(0, len(images), batch_size)])
        self.train(was)
        return out


@dataclass
class BprTerms:
    """BPR objective parts of one batch (all scalars)."""

    loss: torch.Tensor
    bpr: torch.Tensor
    reg: torch.Tensor
    x_uij: torch.Tensor = field(repr=False)


def bpr_loss(x_uij: torch.Tensor) -> torch.Tensor:
    """Mean ``-log sigmoid(x_ui - x_uj)`` (softplus form, numerically stable)."""
    return F.softplus(-x_uij).mean()


def dvbpr_objective(
    model: Dvbpr, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, lambda_theta: float
) -> BprTerms:
    """BPR loss of (u, i, j) with images ``pos``/``neg`` (B,3,S,S) plus L2 on the batch's theta_u.

    ``lambda_theta * mean_b ||theta_u||^2``; CNN weights are regularised by the optimiser's weight
    decay instead.
    """
    vecs = model.encoder(torch.cat([pos, neg]))
    vi, vj = vecs.chunk(2)
    th = model.theta[users]
    x = (th * (vi - vj)).sum(dim=1)
    bpr = bpr_loss(x)
    reg = th.pow(2).sum(dim=1).mean()
    return BprTerms(bpr + lambda_theta * reg, bpr, reg, x.detach())
