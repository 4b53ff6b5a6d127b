"""The few catalogue fields the retrieval models use, and how to obtain prepared data.

Training code takes any object with ``.catalogue`` and ``.heldout`` whose members carry
``product_ids``, ``images`` (N,S,S,3 uint8), ``category``, ``fm_class`` and ``colour`` arrays, so
tests can pass synthetic stand-ins (:func:`synthetic_prepared`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

#: Fashion-MNIST class names (index = fm_class), as nouns used in modification texts.
FM_NOUNS = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


class CatalogueLike(Protocol):
    product_ids: np.ndarray
    images: np.ndarray
    category: np.ndarray
    fm_class: np.ndarray
    colour: np.ndarray


class PreparedLike(Protocol):
    catalogue: CatalogueLike
    heldout: CatalogueLike


@dataclass
class SimpleCatalogue:
    """Plain container with the catalogue fields (used by tests and by subsetting)."""

    product_ids: np.ndarray
    images: np.ndarray
    category: np.ndarray
    fm_class: np.ndarray
    colour: np.ndarray
    colour_names: tuple[str, ...] = ()
    category_names: tuple[str, ...] = ()
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    attribute_values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.product_ids)


@dataclass
class SimplePrepared:
    catalogue: SimpleCatalogue
    heldout: SimpleCatalogue
    colour_names: tuple[str, ...] = ()


def subset(cat: CatalogueLike, index: np.ndarray) -> SimpleCatalogue:
    """Rows ``index`` of a catalogue as a :class:`SimpleCatalogue`."""
    rows = {f: np.asarray(getattr(cat, f))[index] for f in ("product_ids", "images", "category", "fm_class", "colour")}
    return SimpleCatalogue(
        **rows,
        colour_names=tuple(getattr(cat, "colour_names", ())),
        category_names=tuple(getattr(cat, "category_names", ())),
        attributes={k: np.asarray(v)[index] for k, v in (getattr(cat, "attributes", None) or {}).items()},
        attribute_values=dict(getattr(cat, "attribute_values", None) or {}),
    )


def synthetic_prepared(
    n: int = 120, n_heldout: int = 40, size: int = 16, n_colours: int = 4, seed: int = 0
) -> SimplePrepared:
    """Tiny random stand-in: blobs whose shape depends on fm_class and tint on colour."""
    rng = np.random.default_rng(seed)
    from couturier.export.data.catalogue import FM_CLASS_TO_CATEGORY as cat_of

    palette = rng.integers(0, 200, size=(n_colours, 3))

    def make(m: int, offset: int) -> SimpleCatalogue:
        fm = rng.integers(0, 10, m)
        col = rng.integers(0, n_colours, m)
        yy, xx = np.mgrid[0:size, 0:size] / size
        imgs = np.full((m, size, size, 3), 255, np.uint8)
        for i in range(m):
            mask = (np.abs(yy - 0.5) < 0.1 + 0.035 * fm[i]) & (np.abs(xx - 0.5) < 0.45 - 0.035 * fm[i])
            mask &= rng.random((size, size)) > 0.1
            imgs[i][mask] = palette[col[i]]
        ids = np.array([f"p{offset + i:05d}" for i in range(m)])
        return SimpleCatalogue(
            ids, imgs, cat_of[fm].astype(np.int64), fm.astype(np.int64), col.astype(np.int64), names, categories
        )

    names = ("red", "navy", "green", "black", "white", "beige")[:n_colours]
    categories = tuple(f"group-{g}" for g in range(int(cat_of.max()) + 1))
    return SimplePrepared(make(n, 0), make(n_heldout, n), names)
