"""Loader for DVBPR's Amazon fashion ``.npy`` (e.g. ``AmazonFashion6ImgPartitioned.npy``).

The file is a pickled 6-element object array written by Python 2::

    [user_train, user_validation, user_test, Item, usernum, itemnum]

``user_train[u]`` (and the validation/test lists) are lists of dicts whose ``b'productid'`` is an
item index in ``0..itemnum-1``; ``Item[i]`` is a dict with JPEG bytes under ``b'imgs'`` and the
category under ``b'c'`` (an int, or a one-hot vector as fed to the conditional GAN). Containers
may be dicts keyed by index or sequences. Loaded with ``encoding='bytes'``, so keys are bytes;
str keys (a file re-saved by Python 3) are accepted too. The file does not say which of the 6
categories is which (the paper: tops/bottoms/shoes for men/women), so they are named by index.

Only open files you trust: ``.npy`` object arrays are pickles.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from couturier.export.data.catalogue import Catalogue
from couturier.export.data.errors import DataFormatError, DatasetCorruptError, DatasetMissingError
from couturier.export.data.interactions import Interactions

FIELDS = ("user_train", "user_validation", "user_test", "Item", "usernum", "itemnum")


@dataclass
class AmazonFashionData:
    """A real DVBPR Amazon data set as a catalogue plus interactions (same item indices)."""

    catalogue: Catalogue
    interactions: Interactions


def _field(entry: Any, key: str, where: str) -> Any:
    if isinstance(entry, Mapping):
        for k in (key.encode(), key):
            if k in entry:
                return entry[k]
    raise DataFormatError(
        f"{where}: missing key b'{key}' (got {type(entry).__name__} "
        f"with keys {list(entry)[:5] if isinstance(entry, Mapping) else 'n/a'})"
    )


def _rows(container: Any, n: int, name: str) -> list[Any]:
    """``container[0..n-1]`` for a dict keyed by index or a sequence/array."""
    if isinstance(container, Mapping):
        missing = [i for i in range(n) if i not in container]
        if missing:
            raise DataFormatError(f"{name} has no entry for index {missing[0]} ({len(missing)} of {n} missing)")
        return [container[i] for i in range(n)]
    if isinstance(container, (Sequence, np.ndarray)) and not isinstance(container, (str, bytes)):
        if len(container) < n:
            raise DataFormatError(f"{name} has {len(container)} entries, expected {n}")
        return [container[i] for i in range(n)]
    raise DataFormatError(f"{name} must be a dict or a list, got {type(container).__name__}")


def _product_ids(entries: Any, itemnum: int, where: str) -> list[int]:
    if not isinstance(entries, (Sequence, np.ndarray)) or isinstance(entries, (str, bytes)):
        raise DataFormatError(f"{where} must be a list of purchases, got {type(entries).__name__}")
    ids = []
    for k, entry in enumerate(entries):
        value = _field(entry, "productid", f"{where}[{k}]")
        try:
            item = int(value)
        except (TypeError, ValueError):
            raise DataFormatError(f"{where}[{k}]: productid {value!r} is not an integer") from None
        if not 0 <= item < itemnum:
            raise DataFormatError(f"{where}[{k}]: productid {item} out of range 0..{itemnum - 1}")
        ids.append(item)
    return ids


def _category(value: Any, where: str) -> tuple[int, int | None]:
    """(category index, one-hot width or None)."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        try:
            return int(arr), None
        except (TypeError, ValueError):
            raise DataFormatError(f"{where}: category b'c' {value!r} is not an integer") from None
    if arr.ndim == 1 and arr.size > 0 and np.issubdtype(arr.dtype, np.number):
        return int(np.argmax(arr)), int(arr.size)
    raise DataFormatError(f"{where}: category b'c' must be an int or a one-hot vector, got {value!r}")


def decode_image(data: Any, image_size: int, where: str) -> np.ndarray:
    """JPEG (or any Pillow-readable) bytes -> (S, S, 3) uint8, squashed to a square like DVBPR."""
    if not isinstance(data, (bytes, bytearray, np.bytes_)):
        raise DataFormatError(f"{where}: b'imgs' must be image bytes, got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            rgb = img.convert("RGB").resize((image_size, image_size), Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetCorruptError(f"{where}: cannot decode its image bytes ({exc})") from exc
    return np.asarray(rgb, dtype=np.uint8)


def load_dvbpr_amazon(path: Path | str, *, image_size: int = 64, progress: bool = False) -> AmazonFashionData:
    """Read a DVBPR ``.npy`` into a :class:`Catalogue` (real images) and :class:`Interactions`.

    Validation and test take the first entry of each user's list (DVBPR evaluates ``[0]``).
    """
    file = Path(path)
    if not file.is_file():
        raise DatasetMissingError(f"DVBPR data file {file} does not exist (e.g. AmazonFashion6ImgPartitioned.npy)")
    try:
        raw = np.load(file, encoding="bytes", allow_pickle=True)
    except Exception as exc:  # numpy raises many types for non-npy / broken pickles
        raise DataFormatError(f"{file}: not a readable .npy file ({type(exc).__name__}: {exc})") from exc
    if isinstance(raw, (list, tuple)) or (isinstance(raw, np.ndarray) and raw.ndim == 1):
        parts: list[Any] | None = list(raw)
        got = f"{len(parts)} elements"
    else:
        parts, got = None, f"a {type(raw).__name__} of shape {getattr(raw, 'shape', '?')}"
    if parts is None or len(parts) != len(FIELDS):
        raise DataFormatError(f"{file}: expected a 6-element array [{', '.join(FIELDS)}], got {got}")
    user_train, user_val, user_test, items, usernum, itemnum = parts
    try:
        usernum, itemnum = int(usernum), int(itemnum)
    except (TypeError, ValueError):
        raise DataFormatError(f"{file}: usernum and itemnum must be integers, got {usernum!r}, {itemnum!r}") from None
    if usernum < 1 or itemnum < 1:
        raise DataFormatError(f"{file}: usernum ({usernum}) and itemnum ({itemnum}) must be positive")

    train, validation, test = [], np.empty(usernum, np.int64), np.empty(usernum, np.int64)
    for name, container, target in (("user_validation", user_val, validation), ("user_test", user_test, test)):
        for u, entries in enumerate(_rows(container, usernum, name)):
            ids = _product_ids(entries, itemnum, f"{name}[{u}]")
            if not ids:
                raise DataFormatError(f"{name}[{u}] is empty; every user needs one held-out item")
            target[u] = ids[0]
    for u, entries in enumerate(_rows(user_train, usernum, "user_train")):
        train.append(np.array(_product_ids(entries, itemnum, f"user_train[{u}]"), dtype=np.int64))

    rows = _rows(items, itemnum, "Item")
    images = np.empty((itemnum, image_size, image_size, 3), dtype=np.uint8)
    category = np.empty(itemnum, dtype=np.int64)
    widths = set()
    for i, entry in enumerate(tqdm(rows, desc="decoding Amazon images", unit="img", disable=not progress)):
        category[i], width = _category(_field(entry, "c", f"Item[{i}]"), f"Item[{i}]")
        widths.add(width)
        images[i] = decode_image(_field(entry, "imgs", f"Item[{i}]"), image_size, f"Item[{i}]")
    n_categories = max([w for w in widths if w] + [int(category.max()) + 1, 1])
    if category.min() < 0:
        raise DataFormatError(f"{file}: negative category index {int(category.min())}")

    catalogue = Catalogue(
        product_ids=np.array([f"amazon-{i:06d}" for i in range(itemnum)], dtype=str),
        images=images,
        category=category,
        fm_class=np.full(itemnum, -1, dtype=np.int64),
        colour=np.full(itemnum, -1, dtype=np.int64),
        source_split=np.repeat(np.array(["amazon"]), itemnum),
        source_index=np.arange(itemnum, dtype=np.int64),
        category_names=tuple(f"amazon-category-{k}" for k in range(n_categories)),
        colour_names=(),
        metadata={
            "source": f"DVBPR Amazon fashion (real) from {file.name}",
            "simulated colours": "no",
            "image_size": image_size,
        },
    )
    interactions = Interactions(
        n_users=usernum,
        n_items=itemnum,
        user_ids=np.array([f"amazon-user-{u:06d}" for u in range(usernum)], dtype=str),
        train=train,
        validation=validation,
        test=test,
        metadata={"source": f"DVBPR Amazon fashion (real) from {file.name}", "simulated": "no"},
    )
    return AmazonFashionData(catalogue=catalogue, interactions=interactions)
