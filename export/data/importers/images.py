"""Decode one untrusted product image (bytes or a file) into an (S, S, 3) uint8 RGB square.

Imports read photos from shops and public data sets, so every image is treated as hostile:

* Only :data:`IMPORT_FORMATS` are tried (JPEG, PNG, WebP, GIF, BMP, TIFF). Pillow's other plugins
  are never reached -- EPS/PS would run Ghostscript, and rare formats are where decoder bugs live.
  HEIC/AVIF, PDF and SVG are named in the refusal so the user knows to convert them to JPEG.
* A pixel cap (:data:`MAX_PIXELS`, per call) is checked on the header size before any pixel is
  decoded, so a decompression bomb costs nothing. Pillow's process-wide ``MAX_IMAGE_PIXELS`` is left
  alone (its own check still applies; it is larger than this cap by default).
* Truncated files are refused (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off); every decoder failure
  becomes an :class:`ImageDecodeError` with a reason a user can act on.

The picture is kept whole: EXIF orientation applied, transparency composited on white, 16-bit and
float greyscale scaled to 8 bits, the longer side resized to S and the shorter side padded with white
(product photos have white backgrounds). Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale (draft
mode) when that still leaves at least S pixels, which is most of the import speed.
"""

from __future__ import annotations

import io
import os
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from couturier.export.data.errors import DataError

#: Formats an import may contain (Pillow names). GIF: first frame; TIFF: first page.
IMPORT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Largest image accepted, in pixels (width x height): 64 megapixels, above any product photo.
MAX_PIXELS = 64_000_000
#: Largest image file read, in bytes.
MAX_FILE_BYTES = 256 * 1024 * 1024

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str]
ProblemKind = Literal["corrupt_image", "unreadable_file"]

_WHITE = (255, 255, 255)
# First bytes of formats people send that are not admitted, for a refusal that says what it got.
_KNOWN_OTHERS: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "PostScript/EPS"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
    (0, b"8BPS", "Photoshop PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
)


class ImageDecodeError(DataError):
    """An image that cannot be imported; ``kind`` says whether the file or its content is at fault."""

    def __init__(self, reason: str, kind: ProblemKind = "corrupt_image") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: ProblemKind = kind

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, ProblemKind]]:
        return type(self), (self.reason, self.kind)


def read_image_bytes(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of an image file, or :class:`ImageDecodeError` (kind ``unreadable_file``)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise ImageDecodeError(
                    f"file is {size / 2**20:.0f} MiB, above the {max_bytes / 2**20:.0f} MiB limit", "unreadable_file"
                )
            return fh.read()
    except FileNotFoundError:
        raise ImageDecodeError(f"file {path} does not exist", "unreadable_file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{path} is a folder, not an image file", "unreadable_file") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {path} ({exc.strerror or exc})", "unreadable_file") from None


def _not_admitted(data: bytes, formats: tuple[str, ...]) -> str:
    head = data[:16]
    for offset, magic, name in _KNOWN_OTHERS:
        if head[offset : offset + len(magic)] == magic:
            return f"{name} images are not imported; convert it to JPEG or PNG"
    if not data:
        return "empty file"
    kind = _sniff(data)
    if kind != "image" and kind.split()[0] not in formats:
        return f"{kind}s are not admitted here (admitted: {', '.join(formats)})"
    if kind != "image":
        return f"corrupt or truncated {kind} (its header cannot be read)"
    return f"not a {', '.join(formats)} image (starts with {head[:8]!r})"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit/float greyscale scaled to 8 bits."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64)
        if values.size and np.nanmax(values) > 255:
            values = values / 257.0  # 16-bit range -> 8-bit
        img = Image.fromarray(np.nan_to_num(values).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("1", "L") and "transparency" in img.info:
        img = img.convert("RGBA")
    if "A" in img.getbands() or img.mode in ("RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _square(img: Image.Image, size: int) -> np.ndarray:
    """Longer side -> ``size``, centred on a white square."""
    width, height = img.size
    scale = size / max(width, height)
    target = (max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale))))
    if target != img.size:
        img = img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if target == (size, size):
        return np.asarray(img, dtype=np.uint8)
    canvas = Image.new("RGB", (size, size), _WHITE)
    canvas.paste(img, ((size - target[0]) // 2, (size - target[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def decode_image(
    source: ImageSource,
    size: int,
    *,
    max_pixels: int = MAX_PIXELS,
    formats: tuple[str, ...] = IMPORT_FORMATS,
) -> np.ndarray:
    """Image bytes or an image file -> (size, size, 3) uint8 RGB, aspect kept, padded on white.

    Raises :class:`ImageDecodeError`: kind ``unreadable_file`` when a file cannot be read, kind
    ``corrupt_image`` for anything wrong with the content (format, size, truncation, decoder error).
    """
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else read_image_bytes(source)
    try:
        img = Image.open(io.BytesIO(data), formats=list(formats))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large ({exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(_not_admitted(data, formats)) from None
    except Exception as exc:  # a hostile header can make any plugin fail in its own way
        raise ImageDecodeError(f"corrupt or truncated {_sniff(data)} ({type(exc).__name__}: {exc})") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageDecodeError(f"{img.format} image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"{img.format} image is {width}x{height} = {width * height:,} pixels, above the limit of "
                f"{max_pixels:,} (a decompression bomb, or a photo to downscale first)"
            )
        try:
            if img.format == "JPEG":
                longer = max(width, height)
                img.draft("RGB", (max(1, width * size // longer), max(1, height * size // longer)))
            img.load()
            return _square(_to_rgb(_oriented(img)), size)
        except Exception as exc:  # decoders report truncation and corruption as many exception types
            raise ImageDecodeError(f"corrupt or truncated {img.format} image ({type(exc).__name__}: {exc})") from None


def _oriented(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored (it is only metadata)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF must not reject an otherwise good photo
        return img


_ADMITTED_MAGIC = (
    (b"\xff\xd8", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(data: bytes) -> str:
    """``PNG image`` etc. for the admitted format the bytes start like, else ``image``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP image"
    return next((f"{name} image" for magic, name in _ADMITTED_MAGIC if data.startswith(magic)), "image")
