"""Colour catalogue from Fashion-MNIST: determinism, stable ids, categories, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from couturier.export.data.catalogue import (
    CATEGORIES,
    COLOUR_NAMES,
    FM_CLASS_TO_CATEGORY,
    PALETTE_RGB,
    Catalogue,
    build_catalogue,
    category_mapping,
)
from couturier.export.data.fashion_mnist import FashionMNIST, load_fashion_mnist


@pytest.fixture(scope="module")
def fm() -> FashionMNIST:
    return load_fashion_mnist()


def test_category_mapping() -> None:
    expected = {  # in the generator's one-hot order
        "tops": ["T-shirt/top", "Shirt"],
        "outerwear": ["Pullover", "Coat"],
        "trousers": ["Trouser"],
        "dresses": ["Dress"],
        "shoes": ["Sandal", "Sneaker", "Ankle boot"],
        "bags": ["Bag"],
    }
    assert CATEGORIES == tuple(expected)
    assert category_mapping() == expected
    assert FM_CLASS_TO_CATEGORY.tolist() == [0, 2, 1, 3, 1, 4, 0, 4, 5, 4]
    assert len(COLOUR_NAMES) >= 12 and PALETTE_RGB.shape == (len(COLOUR_NAMES), 3)


def test_build_is_deterministic_and_stratified(fm: FashionMNIST) -> None:
    a = build_catalogue(fm, items_per_class=30, seed=3)
    b = build_catalogue(fm, items_per_class=30, seed=3)
    assert len(a) == 300 and a.image_size == 32
    assert a.images.shape == (300, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.category.dtype == np.int64 and a.colour.dtype == np.int64 and a.fm_class.dtype == np.int64
    for name in ("product_ids", "images", "category", "fm_class", "colour", "source_split", "source_index"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.bincount(a.fm_class).tolist() == [30] * 10
    # first 30 of each class in source order
    for c in range(10):
        assert a.source_index[a.fm_class == c].tolist() == np.flatnonzero(fm.train.labels == c)[:30].tolist()
    assert np.array_equal(a.category, FM_CLASS_TO_CATEGORY[a.fm_class])
    assert np.array_equal(a.fm_class, fm.train.labels[a.source_index])
    assert a.metadata["simulated colours"] == "yes"
    other_seed = build_catalogue(fm, items_per_class=30, seed=4)
    assert not np.array_equal(other_seed.colour, a.colour)


def test_ids_and_colours_do_not_depend_on_size(fm: FashionMNIST) -> None:
    small = build_catalogue(fm, items_per_class=5)
    large = build_catalogue(fm, items_per_class=40)
    assert str(small.product_ids[0]) == f"fm-train-{int(small.source_index[0]):06d}"
    for i, pid in enumerate(small.product_ids):
        j = large.index_of(str(pid))
        assert large.colour[j] == small.colour[i] and large.source_index[j] == small.source_index[i]
        assert np.array_equal(large.images[j], small.images[i])
    assert len(set(large.product_ids.tolist())) == len(large)
    # every colour is used
    assert set(large.colour.tolist()) == set(range(len(COLOUR_NAMES)))


def test_images_look_like_product_photos(fm: FashionMNIST) -> None:
    cat = build_catalogue(fm, items_per_class=20, image_size=64)
    assert cat.images.shape == (200, 64, 64, 3) and cat.image_size == 64
    corners = cat.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners.min(axis=(1, 2)) >= 250).mean() > 0.9  # white background (a few garments touch a corner)
    # the garment (darker than white) is tinted towards its palette colour
    for img, colour in zip(cat.images[:50], cat.colour[:50]):
        rgb = img.reshape(-1, 3).astype(float)
        garment = rgb[rgb.min(axis=1) < 200]
        if len(garment) < 20:
            continue
        ref = PALETTE_RGB.astype(float)
        mean = garment.mean(axis=0)
        chroma = mean - mean.mean()
        refc = ref[colour] - ref[colour].mean()
        if np.linalg.norm(refc) > 40:  # chromatic colours: hue direction preserved
            assert chroma @ refc > 0.5 * np.linalg.norm(chroma) * np.linalg.norm(refc)


def test_heldout_from_test_split(fm: FashionMNIST) -> None:
    held = build_catalogue(fm, items_per_class=100, split="test")
    assert len(held) == 1000 and set(held.source_split.tolist()) == {"test"}
    assert str(held.product_ids[0]).startswith("fm-test-")
    assert np.bincount(held.fm_class).tolist() == [100] * 10


def test_save_load_subset_index_of(fm: FashionMNIST, tmp_path: Path) -> None:
    cat = build_catalogue(fm, items_per_class=10)
    cat.save(tmp_path, "cat")
    back = Catalogue.load(tmp_path, "cat")
    for name in ("product_ids", "images", "category", "fm_class", "colour", "source_split", "source_index"):
        assert np.array_equal(getattr(back, name), getattr(cat, name)), name
    assert back.metadata["seed"] == 0 and back.metadata["simulated colours"] == "yes"
    assert back.metadata["category_mapping"]["shoes"] == ["Sandal", "Sneaker", "Ankle boot"]
    sub = cat.subset([5, 2])
    assert sub.product_ids.tolist() == [cat.product_ids[5], cat.product_ids[2]]
    assert sub.index_of(str(cat.product_ids[2])) == 1
    with pytest.raises(KeyError):
        cat.index_of("fm-train-999999")
