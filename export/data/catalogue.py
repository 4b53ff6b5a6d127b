"""A deterministic colour product catalogue built from the real Fashion-MNIST images.

Images are real (Fashion-MNIST garments); colours are SIMULATED. Each grayscale garment is turned
into a product-photo look: white background, the garment tinted by one palette colour, the
original grayscale intensity kept as shading/texture, and a soft mask (from intensity, closed to
fill dark patterns) so edges blend smoothly into the background.

Categories. Kang et al.'s conditional GAN (DVBPR, ICDM 2017) uses 6 categories: tops, bottoms and
shoes, each for men and women. Fashion-MNIST records no gender, so we keep 6 groups but split them
by garment type instead::

    tops      <- T-shirt/top, Shirt
    outerwear <- Pullover, Coat
    trousers  <- Trouser
    dresses   <- Dress
    shoes     <- Sandal, Sneaker, Ankle boot
    bags      <- Bag

Ids and colours depend only on (seed, split, source index), never on the catalogue size or order:
item ``fm-train-012345`` is the same product in every catalogue that contains it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from couturier.export.data.errors import DataFormatError
from couturier.export.data.fashion_mnist import FM_CLASSES, FashionMNIST
from couturier.export.data.stored import load_stored, save_stored

#: The simulated world's category groups, in code order (the generator's one-hot order on this data).
#: Other datasets bring their own list (``dataset.json`` ``categories``).
CATEGORIES: tuple[str, ...] = ("tops", "outerwear", "trousers", "dresses", "shoes", "bags")
#: Attribute names of the simulated world: the palette colour and the Fashion-MNIST class name.
COLOUR_ATTRIBUTE = "colour"
GARMENT_ATTRIBUTE = "garment"

#: Fashion-MNIST class index -> category index (into :data:`CATEGORIES`).
FM_CLASS_TO_CATEGORY: np.ndarray = np.array([0, 2, 1, 3, 1, 4, 0, 4, 5, 4], dtype=np.int64)

#: Named garment colours (RGB 0..255). "cream" stands in for white so it shows on white.
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (28, 28, 32)),
    ("cream", (240, 230, 200)),
    ("grey", (135, 138, 145)),
    ("red", (200, 30, 40)),
    ("orange", (240, 125, 25)),
    ("yellow", (245, 205, 35)),
    ("green", (45, 135, 55)),
    ("teal", (15, 140, 140)),
    ("blue", (45, 105, 215)),
    ("navy", (25, 35, 95)),
    ("purple", (120, 50, 155)),
    ("pink", (240, 130, 175)),
    ("brown", (115, 65, 30)),
    ("beige", (200, 170, 125)),
)
COLOUR_NAMES: tuple[str, ...] = tuple(name for name, _ in PALETTE)
PALETTE_RGB: np.ndarray = np.array([rgb for _, rgb in PALETTE], dtype=np.uint8)

SPLIT_CODES: dict[str, int] = {"train": 1, "test": 2}
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def category_mapping() -> dict[str, list[str]]:
    """Category name -> the Fashion-MNIST class names it groups."""
    return {
        name: [FM_CLASSES[c] for c in range(len(FM_CLASSES)) if FM_CLASS_TO_CATEGORY[c] == k]
        for k, name in enumerate(CATEGORIES)
    }


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser (uint64 in, uint64 out, wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def item_colours(seed: int, split: str, indices: np.ndarray, n_colours: int = len(PALETTE)) -> np.ndarray:
    """Deterministic colour index per source image, a hash of (seed, split, index)."""
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    base = _splitmix64(base ^ np.uint64(SPLIT_CODES[split]))
    hashed = _splitmix64(base ^ np.asarray(indices, dtype=np.uint64))
    return (hashed % np.uint64(n_colours)).astype(np.int64)


def product_id(split: str, index: int) -> str:
    """Stable product id of a Fashion-MNIST source image, e.g. ``fm-train-012345``."""
    return f"fm-{split}-{index:06d}"


def _close_mask(mask: np.ndarray) -> np.ndarray:
    """Morphological closing (3x3 dilate then erode) of a batch of (N, H, W) float masks."""

    def shift_reduce(a: np.ndarray, op: Any, pad: float) -> np.ndarray:
        p = np.pad(a, ((0, 0), (1, 1), (1, 1)), constant_values=pad)
        out = a.copy()
        h, w = a.shape[1:]
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out = op(out, p[:, dy : dy + h, dx : dx + w])
        return out

    return shift_reduce(shift_reduce(mask, np.maximum, 0.0), np.minimum, 1.0)


def _resize_batch(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W) float32 maps to (N, size, size) with Pillow's Lanczos filter."""
    if arr.shape[1:] == (size, size):
        return arr.astype(np.float32, copy=True)
    out = np.empty((arr.shape[0], size, size), dtype=np.float32)
    for i, plane in enumerate(arr):
        img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def colourise(gray: np.ndarray, colours: np.ndarray, *, image_size: int = 32) -> np.ndarray:
    """Product-photo RGB images from grayscale garments.

    ``gray``: (N, H, W) uint8, 0 = background (Fashion-MNIST convention). ``colours``: (N,) palette
    indices. Returns (N, image_size, image_size, 3) uint8 on a white background.
    """
    x = gray.astype(np.float32) / 255.0
    mask = np.clip((x - 0.01) / 0.12, 0.0, 1.0)
    mask = _close_mask(mask)
    peak = np.maximum(np.percentile(x.reshape(len(x), -1), 99, axis=1), 0.2)[:, None, None]
    shade = np.clip(x / peak, 0.0, 1.0)
    shade = _resize_batch(shade, image_size)
    mask = _resize_batch(mask, image_size)
    mask = mask * mask * (3.0 - 2.0 * mask)  # smoothstep: soft, clean edges
    rgb = PALETTE_RGB[np.asarray(colours)].astype(np.float32) / 255.0  # (N, 3)
    garment = rgb[:, None, None, :] * (0.5 + 0.5 * shade[..., None])
    out = mask[..., None] * garment + (1.0 - mask[..., None]) * 1.0
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Catalogue:
    """Products with images. Arrays are aligned along the first axis (N items).

    ``images`` may be a read-only ``np.memmap`` (a dataset folder's image store): nothing here copies
    or writes it (:meth:`subset` copies the selected rows only). ``fm_class`` and ``colour`` are -1
    where unknown (``fm_class`` is known on the simulated world only; ``colour`` mirrors a "colour"
    attribute). ``attributes`` holds one int code array per categorical attribute (-1 = unknown) with
    its names in ``attribute_values``; ``numeric_attributes`` holds float arrays (NaN = unknown).
    ``metadata`` records provenance (what is real, what is simulated, seeds, sizes).
    """

    product_ids: np.ndarray  # (N,) str
    images: np.ndarray  # (N, S, S, 3) uint8
    category: np.ndarray  # (N,) int64
    fm_class: np.ndarray  # (N,) int64
    colour: np.ndarray  # (N,) int64
    source_split: np.ndarray  # (N,) str
    source_index: np.ndarray  # (N,) int64
    category_names: tuple[str, ...] = CATEGORIES
    colour_names: tuple[str, ...] = COLOUR_NAMES
    metadata: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    attribute_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    numeric_attributes: dict[str, np.ndarray] = field(default_factory=dict)
    _index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    _ARRAYS = ("product_ids", "images", "category", "fm_class", "colour", "source_split", "source_index")

    def __post_init__(self) -> None:
        n = len(self.product_ids)
        for name in self._ARRAYS:
            if len(getattr(self, name)) != n:
                raise DataFormatError(f"catalogue field {name} has {len(getattr(self, name))} rows, expected {n}")
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.shape[1] != self.images.shape[2]:
            raise DataFormatError(f"catalogue images must be (N, S, S, 3), got {self.images.shape}")
        for kind, table in (("attribute", self.attributes), ("numeric attribute", self.numeric_attributes)):
            for name, values in table.items():
                if len(values) != n:
                    raise DataFormatError(f"catalogue {kind} {name!r} has {len(values)} rows, expected {n}")
        unnamed = sorted(set(self.attributes) - set(self.attribute_values))
        if unnamed:
            raise DataFormatError(f"catalogue attributes {unnamed} have no attribute_values (names of their codes)")

    def __len__(self) -> int:
        return len(self.product_ids)

    @property
    def image_size(self) -> int:
        """Side S of the square images."""
        return int(self.images.shape[1])

    def index_of(self, product_id: str) -> int:
        """Row of ``product_id``; raises KeyError if absent."""
        if self._index is None:
            self._index = {str(pid): i for i, pid in enumerate(self.product_ids)}
        return self._index[product_id]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Catalogue:
        """A new catalogue with the rows ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        arrays = {name: np.asarray(getattr(self, name)[idx]) for name in self._ARRAYS}
        return Catalogue(
            **arrays,
            category_names=self.category_names,
            colour_names=self.colour_names,
            metadata={**self.metadata, "subset_of": self.metadata.get("name", "catalogue")},
            attributes={name: np.asarray(codes)[idx] for name, codes in self.attributes.items()},
            attribute_values=dict(self.attribute_values),
            numeric_attributes={name: np.asarray(v)[idx] for name, v in self.numeric_attributes.items()},
        )

    def save(self, directory: Path | str, name: str = "catalogue") -> Path:
        """Write ``<name>.npz`` (arrays) and ``<name>.json`` (metadata); returns the npz path."""
        arrays = {key: getattr(self, key) for key in self._ARRAYS}
        arrays["product_ids"] = np.asarray(self.product_ids, dtype=str)
        arrays["source_split"] = np.asarray(self.source_split, dtype=str)
        arrays.update({f"attr.{name}": np.asarray(codes) for name, codes in self.attributes.items()})
        arrays.update({f"num.{name}": np.asarray(values) for name, values in self.numeric_attributes.items()})
        meta = {
            "n_items": len(self),
            "image_size": self.image_size,
            "category_names": list(self.category_names),
            "colour_names": list(self.colour_names),
            "attribute_values": {name: list(values) for name, values in self.attribute_values.items()},
            "metadata": self.metadata,
        }
        return save_stored(directory, name, arrays, meta)

    @classmethod
    def load(cls, directory: Path | str, name: str = "catalogue") -> Catalogue:
        """Read a catalogue written by :meth:`save`."""
        arrays, meta = load_stored(directory, name, f"catalogue '{name}'")
        return cls(
            **{key: arrays[key] for key in cls._ARRAYS},
            category_names=tuple(meta["category_names"]),
            colour_names=tuple(meta["colour_names"]),
            metadata=meta.get("metadata", {}),
            attributes={key[5:]: value for key, value in arrays.items() if key.startswith("attr.")},
            attribute_values={name: tuple(values) for name, values in meta.get("attribute_values", {}).items()},
            numeric_attributes={key[4:]: value for key, value in arrays.items() if key.startswith("num.")},
        )


def stratified_indices(labels: np.ndarray, items_per_class: int | None) -> np.ndarray:
    """The first ``items_per_class`` indices of each class in source order (None = all), sorted."""
    if items_per_class is None:
        return np.arange(len(labels), dtype=np.int64)
    if items_per_class < 1:
        raise ValueError(f"items_per_class must be >= 1 or None, got {items_per_class}")
    picks = [np.flatnonzero(labels == c)[:items_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def build_catalogue(
    fm: FashionMNIST,
    *,
    items_per_class: int | None = None,
    image_size: int = 32,
    seed: int = 0,
    split: str = "train",
    progress: bool = False,
    chunk: int = 2048,
) -> Catalogue:
    """Colour catalogue from one Fashion-MNIST split (``split="test"`` gives the held-out queries).

    Stratified: the first ``items_per_class`` images of each class in source order (None = all).
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    source = fm.split(split)
    idx = stratified_indices(source.labels, items_per_class)
    fm_class = source.labels[idx].astype(np.int64)
    colour = item_colours(seed, split, idx)
    images = np.empty((len(idx), image_size, image_size, 3), dtype=np.uint8)
    starts = range(0, len(idx), chunk)
    for start in tqdm(starts, desc=f"colourising {split}", unit="chunk", disable=not progress):
        sl = slice(start, start + chunk)
        images[sl] = colourise(source.images[idx[sl]], colour[sl], image_size=image_size)
    return Catalogue(
        product_ids=np.array([product_id(split, int(i)) for i in idx], dtype=str),
        images=images,
        category=FM_CLASS_TO_CATEGORY[fm_class],
        fm_class=fm_class,
        colour=colour,
        source_split=np.repeat(np.array([split]), len(idx)),
        source_index=idx,
        metadata={
            "source": "Fashion-MNIST (real images; Debian package dataset-fashion-mnist)",
            "simulated colours": "yes",
            "split": split,
            "seed": seed,
            "items_per_class": items_per_class,
            "image_size": image_size,
            "n_items": len(idx),
            "category_mapping": category_mapping(),
            "palette": {name: list(rgb) for name, rgb in PALETTE},
        },
        attributes={COLOUR_ATTRIBUTE: colour, GARMENT_ATTRIBUTE: fm_class},
        attribute_values={COLOUR_ATTRIBUTE: COLOUR_NAMES, GARMENT_ATTRIBUTE: FM_CLASSES},
    )
