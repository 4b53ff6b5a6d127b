"""Pillow-only drawings: training curves and image grids (no matplotlib dependency)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def smooth(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length as the input)."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(len(v)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def draw_curves(
    path: Path,
    curves: Mapping[str, Sequence[float]],
    title: str,
    width: int = 720,
    panel_h: int = 160,
    window: int = 20,
) -> None:
    """One panel per curve (own y-range), x = step; raw values faint, moving average bold."""
    names = [k for k, v in curves.items() if len(v) > 0]
    pad_l, pad_r, pad_t = 70, 16, 28
    img = Image.new("RGB", (width, pad_t + panel_h * max(1, len(names))), "white")
    d = ImageDraw.Draw(img)
    d.text((pad_l, 6), title, fill="black")
    for row, name in enumerate(names):
        raw = np.asarray(curves[name], dtype=np.float64)
        sm = smooth(raw, window)
        top = pad_t + row * panel_h + 14
        bottom = pad_t + (row + 1) * panel_h - 18
        lo, hi = float(np.nanmin(raw)), float(np.nanmax(raw))
        if hi - lo < 1e-12:
            hi = lo + 1.0
        d.rectangle([pad_l, top, width - pad_r, bottom], outline=(160, 160, 160))
        d.text((4, top - 2), f"{hi:.3g}", fill="black")
        d.text((4, bottom - 10), f"{lo:.3g}", fill="black")
        d.text((pad_l + 4, top - 13), f"{name} (last avg {sm[-1]:.4g}, steps {len(raw)})", fill="black")
        n = len(raw)
        xs = pad_l + (np.arange(n) / max(1, n - 1)) * (width - pad_r - pad_l)
        colour = _PALETTE[row % len(_PALETTE)]
        faint = tuple(int(c + (255 - c) * 0.7) for c in colour)
        for series, fill, w in ((raw, faint, 1), (sm, colour, 2)):
            ys = bottom - (series - lo) / (hi - lo) * (bottom - top)
            d.line(list(zip(xs.tolist(), ys.tolist())), fill=fill, width=w)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    scale: int = 3,
    gap: int = 2,
    labels: Sequence[str] | None = None,
    label_w: int = 0,
) -> Image.Image:
    """Grid of (S,S,3) uint8 tiles; optional text label per row drawn in a left margin."""
    s = rows[0][0].shape[0] * scale
    ncol = max(len(r) for r in rows)
    img = Image.new("RGB", (label_w + ncol * (s + gap) + gap, len(rows) * (s + gap) + gap), (230, 230, 230))
    d = ImageDraw.Draw(img)
    for i, row in enumerate(rows):
        y = gap + i * (s + gap)
        if labels is not None:
            _wrapped_text(d, (4, y + 2), labels[i], label_w - 8)
        for j, tile in enumerate(row):
            im = Image.fromarray(tile).resize((s, s), Image.Resampling.NEAREST)
            img.paste(im, (label_w + gap + j * (s + gap), y))
    return img


def _wrapped_text(d: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, max_w: int) -> None:
    words, line, y = text.split(), "", xy[1]
    for word in words:
        trial = f"{line} {word}".strip()
        if d.textlength(trial) > max_w and line:
            d.text((xy[0], y), line, fill="black")
            y, line = y + 11, word
        else:
            line = trial
    if line:
        d.text((xy[0], y), line, fill="black")
