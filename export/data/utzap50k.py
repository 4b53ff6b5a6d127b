"""Loader for UT-Zap50K shoe images laid out as ``<root>/<Category>/<SubCategory>/<Brand>/<name>.jpg``.

Category is one of Boots, Sandals, Shoes, Slippers. Images are padded to a square with white
(the photos have white backgrounds) and resized. Each item's id is stable: ``utzap:`` plus its
path relative to the root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from couturier.export.data.catalogue import Catalogue
from couturier.export.data.errors import DataFormatError, DatasetCorruptError, DatasetMissingError

UTZAP_CATEGORIES: tuple[str, ...] = ("Boots", "Sandals", "Shoes", "Slippers")
_SUFFIXES = {".jpg", ".jpeg"}


@dataclass
class UTZap50K:
    """UT-Zap50K images (N, S, S, 3) uint8 with their labels (aligned arrays)."""

    product_ids: np.ndarray  # (N,) str
    images: np.ndarray
    category: np.ndarray  # (N,) int64 into UTZAP_CATEGORIES
    subcategory: np.ndarray  # (N,) str
    brand: np.ndarray  # (N,) str
    relative_paths: np.ndarray  # (N,) str, POSIX

    def __len__(self) -> int:
        return len(self.product_ids)

    def to_catalogue(self) -> Catalogue:
        """As a :class:`Catalogue` (categories = UT-Zap50K categories; no colour/FM class)."""
        n = len(self)
        return Catalogue(
            product_ids=self.product_ids,
            images=self.images,
            category=self.category,
            fm_class=np.full(n, -1, dtype=np.int64),
            colour=np.full(n, -1, dtype=np.int64),
            source_split=np.repeat(np.array(["utzap50k"]), n),
            source_index=np.arange(n, dtype=np.int64),
            category_names=UTZAP_CATEGORIES,
            colour_names=(),
            metadata={"source": "UT-Zap50K (real)", "simulated colours": "no", "image_size": int(self.images.shape[1])},
        )


def square_rgb(img: Image.Image, size: int) -> np.ndarray:
    """Pad to a white square (centred), resize to ``size``, return (size, size, 3) uint8."""
    rgb = img.convert("RGB")
    side = max(rgb.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def _scan(root: Path) -> list[Path]:
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    if not any(name in UTZAP_CATEGORIES for name in entries):
        nested = [
            name
            for name in entries
            if (root / name).is_dir() and any((root / name / c).is_dir() for c in UTZAP_CATEGORIES)
        ]
        hint = f"; did you mean {root / nested[0]}?" if nested else ""
        raise DataFormatError(
            f"{root} does not look like UT-Zap50K: expected folders {', '.join(UTZAP_CATEGORIES)} "
            f"(<Category>/<SubCategory>/<Brand>/<name>.jpg), found {entries[:10]}{hint}"
        )
    unknown = [name for name in entries if name not in UTZAP_CATEGORIES and (root / name).is_dir()]
    if unknown:
        raise DataFormatError(
            f"{root}: unexpected folder {unknown[0]!r}; categories must be {', '.join(UTZAP_CATEGORIES)}"
        )
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in _SUFFIXES and not path.name.startswith("."):
            rel = path.relative_to(root)
            if len(rel.parts) != 4:
                raise DataFormatError(
                    f"{root}: image {rel.as_posix()} is not at <Category>/<SubCategory>/<Brand>/<name>.jpg"
                )
            files.append(path)
    if not files:
        raise DataFormatError(f"{root}: no .jpg images under {', '.join(UTZAP_CATEGORIES)}")
    return files


def load_utzap50k(
    root: Path | str, *, image_size: int = 64, limit: int | None = None, progress: bool = False
) -> UTZap50K:
    """Read UT-Zap50K images under ``root`` in sorted path order (``limit`` = first N only)."""
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetMissingError(f"UT-Zap50K folder {folder} does not exist")
    files = _scan(folder)[:limit]
    images = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    rels = [p.relative_to(folder).as_posix() for p in files]
    for k, path in enumerate(tqdm(files, desc="reading UT-Zap50K", unit="img", disable=not progress)):
        try:
            with Image.open(path) as img:
                images[k] = square_rgb(img, image_size)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DatasetCorruptError(f"{path}: cannot decode image ({exc})") from exc
    parts = [rel.split("/") for rel in rels]
    return UTZap50K(
        product_ids=np.array([f"utzap:{rel}" for rel in rels], dtype=str),
        images=images,
        category=np.array([UTZAP_CATEGORIES.index(p[0]) for p in parts], dtype=np.int64),
        subcategory=np.array([p[1] for p in parts], dtype=str),
        brand=np.array([p[2] for p in parts], dtype=str),
        relative_paths=np.array(rels, dtype=str),
    )
