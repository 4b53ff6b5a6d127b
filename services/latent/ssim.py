"""Structural similarity (SSIM, Wang et al. 2004) of images in [-1, 1]; numpy only.

Window: a 7x7 Gaussian with sigma 1.5, applied without padding ("valid"). The classic 11x11 /
sigma 1.5 window leaves only a 22x22 map on a 32 px image; 7x7 (what scikit-image uses by
default, there as a uniform window) keeps 26x26 of 32 px and 58x58 of 64 px while the Gaussian
still carries ~98% of its mass. Constants K1 = 0.01, K2 = 0.03 of the data range, which is 2 for
images in [-1, 1]. Colour images: the mean of the per-channel SSIM maps (as scikit-image does with
``channel_axis``). GIGS's "opposite SSIM" is ``1 - ssim(variant, base)``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["DATA_RANGE", "WINDOW_SIGMA", "WINDOW_SIZE", "gaussian_window", "ssim"]

#: Images are in [-1, 1].
DATA_RANGE = 2.0
WINDOW_SIZE = 7
WINDOW_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps (the 2-D window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g: np.ndarray = np.exp(-(x**2) / (2 * sigma**2))
    window: np.ndarray = g / g.sum()
    return window


def _filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes of ``x`` with the 1-D window ``g``."""
    rows: np.ndarray = sliding_window_view(x, g.size, axis=-1) @ g
    both: np.ndarray = sliding_window_view(rows, g.size, axis=-2) @ g
    return both


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    *,
    data_range: float = DATA_RANGE,
    window_size: int = WINDOW_SIZE,
    sigma: float = WINDOW_SIGMA,
) -> np.ndarray:
    """Mean SSIM of images ``a`` and ``b`` shaped ``(..., C, H, W)``; returns shape ``(...)`` (float64).

    Leading axes broadcast (e.g. ``(n,3,S,S)`` against ``(3,S,S)``). 1 for identical images,
    symmetric in ``a`` and ``b``. Raises ValueError when the shapes do not broadcast, an image has
    fewer than 3 axes, or it is smaller than the window.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim < 3 or b.ndim < 3:
        raise ValueError(f"ssim needs images shaped (..., C, H, W), got {a.shape} and {b.shape}")
    if a.shape[-3:] != b.shape[-3:]:
        raise ValueError(f"ssim needs images of the same (C, H, W), got {a.shape} and {b.shape}")
    if min(a.shape[-2:]) < window_size:
        raise ValueError(f"images of {a.shape[-2]}x{a.shape[-1]} px are smaller than the {window_size} px window")
    try:
        a, b = np.broadcast_arrays(a, b)
    except ValueError:
        raise ValueError(f"ssim cannot broadcast image batches {a.shape} and {b.shape}") from None
    g = gaussian_window(window_size, sigma)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mu_a, mu_b = _filter(a, g), _filter(b, g)
    var_a = _filter(a * a, g) - mu_a**2
    var_b = _filter(b * b, g) - mu_b**2
    cov = _filter(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    ssim: np.ndarray = (num / den).mean(axis=(-3, -2, -1))
    return ssim
