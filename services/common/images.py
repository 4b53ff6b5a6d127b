"""Image payloads: decode caller bytes safely, encode model outputs as PNG."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from couturier.services.common import limits
from couturier.services.common.errors import InvalidInput

#: The formats the contract accepts, as Pillow names what it detects (MPO: a multi-picture JPEG).
ACCEPTED_FORMATS = frozenset({*limits.IMAGE_FORMATS, "MPO"})


def decode_image(data: bytes, field: str = "image") -> np.ndarray:
    """Encoded bytes -> RGB uint8 array (H, W, 3), enforcing the size limits."""
    if not data:
        raise InvalidInput(f"{field}.data is empty; send PNG, JPEG or WebP bytes")
    if len(data) > limits.MAX_IMAGE_BYTES:
        raise InvalidInput(
            f"{field}.data is {len(data)} bytes; the limit is {limits.MAX_IMAGE_BYTES} bytes (re-encode or downscale)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:  # detected from the header, before any pixel is decoded
                raise InvalidInput(f"{field}.data is in {image.format} format; send PNG, JPEG or WebP")
            width, height = image.size
            if max(width, height) > limits.MAX_IMAGE_SIDE:
                raise InvalidInput(f"{field} is {width}x{height} pixels; the limit is {limits.MAX_IMAGE_SIDE} per side")
            rgb = image.convert("RGB")
            rgb.load()
    except InvalidInput:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise InvalidInput(f"{field}.data is not a readable PNG/JPEG/WebP image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """RGB uint8 (H, W, 3) or float in [-1, 1] -> PNG bytes."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = np.clip((array.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def to_model_input(images: list[np.ndarray], size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) images -> float32 NCHW in [-1, 1] at ``size`` x ``size`` (the models' layout)."""
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for row, pixels in enumerate(images):
        if pixels.shape[:2] != (size, size):
            pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
        batch[row] = pixels.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    return batch


def chw_png(image: np.ndarray) -> bytes:
    """A model image (3, S, S) float in [-1, 1] -> PNG bytes."""
    return encode_png(np.asarray(image).transpose(1, 2, 0))
