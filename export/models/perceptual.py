"""A small perceptual distance for GAN inversion (stand-in for LPIPS, whose weights are not offline).

Features are the conv-block outputs of the trained DVBPR item encoder (:class:`ItemEncoder`),
frozen. The distance follows LPIPS's form without its learnt per-channel weights: unit-normalise
each spatial feature vector over channels, then average the squared difference over positions and
channels, and sum over layers. It is per-sample (B,), built from ops the gradient exporter handles.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from couturier.export.models.dvbpr import ItemEncoder

_EPS = 1e-6


def perceptual_features(encoder: ItemEncoder, images: torch.Tensor) -> list[torch.Tensor]:
    """Conv-block outputs of ``encoder`` for (B,3,S,S) images in [-1, 1], shallow to deep."""
    return encoder.features(images)


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / torch.sqrt((f * f).sum(dim=1, keepdim=True) + _EPS)


def feature_distance(fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS-form distance (B,) between two feature lists of the same shapes."""
    total = torch.zeros(fa[0].shape[0], dtype=fa[0].dtype, device=fa[0].device)
    for a, b in zip(fa, fb, strict=True):
        total = total + (_unit(a) - _unit(b)).pow(2).mean(dim=(1, 2, 3))
    return total


class PerceptualDistance(nn.Module):
    """``d(a, b) -> (B,)`` on (B,3,S,S) images in [-1, 1]; the encoder is frozen and in eval mode."""

    def __init__(self, encoder: ItemEncoder) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """:func:`perceptual_features` of the frozen encoder."""
        return perceptual_features(self.encoder, images)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return feature_distance(self.features(a), self.features(b))

    def train(self, mode: bool = True) -> PerceptualDistance:  # stays frozen in eval mode
        super().train(False)
        return self


def load_perceptual(dvbpr_run_dir: Path | str) -> PerceptualDistance:
    """Perceptual distance from the item encoder of a trained DVBPR run directory."""
    from couturier.export.training.train_dvbpr import load_dvbpr

    return PerceptualDistance(load_dvbpr(dvbpr_run_dir).encoder)
