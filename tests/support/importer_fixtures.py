"""Source files for the importers, written by the tests: DVBPR ``.npy`` files (as Python 2 wrote them,
and a malicious one), a shop's CSV/Parquet tables with PNG and JPEG photos, a UT-Zap50K tree.
Images are tiny solid colours, so a test can check that each product got its own picture."""

from __future__ import annotations

import io
import os
import pickle
import struct
import types
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image

COLOURS = [(200, 30, 40), (30, 160, 60), (40, 70, 210), (240, 200, 40), (90, 90, 90), (150, 60, 170)]


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes protocol-2 pickles the way Python 2 and numpy 1.x did: bytes as Python 2 ``str``
    (SHORT_BINSTRING, so ``encoding='bytes'`` reads them back as bytes) and ``numpy.core`` module names."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[types.FunctionType] = save_global


def _object_array(parts: list[Any]) -> np.ndarray:
    arr = np.empty(len(parts), dtype=object)
    for k, part in enumerate(parts):
        arr[k] = part
    return arr


def py2_npy(path: Path, parts: list[Any]) -> Path:
    """An object-array ``.npy`` whose pickle is written as by Python 2 (like DVBPR's files)."""
    arr = _object_array(parts)
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, npy_format.header_data_from_array_1_0(arr))
    Py2Pickler(buf, protocol=2).dump(arr)
    path.write_bytes(buf.getvalue())
    return path


def py3_npy(path: Path, parts: list[Any]) -> Path:
    """The same, saved by numpy under Python 3 (protocol 4 pickle)."""
    np.save(path, _object_array(parts), allow_pickle=True)
    return path


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def malicious_npy(path: Path, marker: Path) -> Path:
    """A valid object-array ``.npy`` header followed by a pickle that would run ``touch marker``."""
    arr = _object_array([None] * 6)
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, npy_format.header_data_from_array_1_0(arr))
    pickle.dump([[], [], [], {0: {b"imgs": _System(f"touch {marker}")}}, 1, 1], buf, protocol=2)
    path.write_bytes(buf.getvalue())
    return path


def dvbpr_images() -> list[bytes]:
    """Six item photos of varied sizes and modes: RGB, grayscale and CMYK JPEGs, an RGBA PNG, ..."""
    c = COLOURS
    return [
        encode(Image.new("RGB", (120, 40), c[0]), "JPEG", quality=95),
        encode(Image.new("L", (30, 90), 90), "JPEG", quality=95),  # grayscale
        encode(Image.new("RGB", (50, 50), c[2]).convert("CMYK"), "JPEG", quality=95),
        encode(Image.new("RGBA", (40, 40), (*c[3], 255)), "PNG"),
        encode(Image.new("RGB", (400, 300), c[4]), "JPEG", quality=90),
        encode(Image.new("RGB", (20, 20), c[5]), "JPEG", quality=95),
    ]


#: Expected centre colour of each :func:`dvbpr_images` item.
DVBPR_COLOURS = [COLOURS[0], (90, 90, 90), COLOURS[2], COLOURS[3], COLOURS[4], COLOURS[5]]


def dvbpr_parts(*, onehot: bool = False, asin: bool = True) -> list[Any]:
    """DVBPR's 6 parts with bytes keys: 3 users, 6 items in categories [0, 5, 2, 2, 1, 0]."""

    def p(i: int, user: int) -> dict[bytes, Any]:
        return {b"productid": i, b"reviewerID": f"R{user}".encode()}

    user_train = {0: [p(0, 0), p(1, 0)], 1: [p(2, 1)], 2: [p(3, 2), p(4, 2), p(0, 2)]}
    user_validation = {0: [p(2, 0)], 1: [p(4, 1)], 2: [p(1, 2)]}
    user_test = {0: [p(3, 0)], 1: [p(5, 1)], 2: [p(2, 2)]}
    items = {}
    for i, (image, category) in enumerate(zip(dvbpr_images(), [0, 5, 2, 2, 1, 0])):
        items[i] = {b"imgs": image, b"c": np.eye(6)[category] if onehot else category}
        if asin:
            items[i][b"asin"] = f"B00{i}".encode()
    return [user_train, user_validation, user_test, items, 3, 6]


def str_keys(value: Any) -> Any:
    """The parts as a Python 3 re-save has them: str keys, lists instead of dicts keyed by index."""
    if isinstance(value, dict):
        if all(isinstance(k, int) for k in value):
            return [str_keys(value[k]) for k in sorted(value)]
        return {(k.decode() if isinstance(k, bytes) else k): str_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [str_keys(v) for v in value]
    return value


def shop_table(
    folder: Path,
    *,
    n_products: int = 6,
    n_users: int = 3,
    purchases_per_user: int = 4,
    timestamps: bool = True,
    parquet: bool = False,
) -> tuple[Path, Path]:
    """``products.csv`` (or ``.parquet``) with PNG and JPEG photos under ``img/`` and ``interactions``.

    Products ``P0..`` alternate JPEG/PNG, categories tops (first half) / shoes; attributes ``colour``
    (categorical, empty for every third) and ``price`` (numeric). User ``u<k>`` buys ``P(k+j)``,
    j = 0..purchases-1, at time ``1000 + 10 * j`` (when ``timestamps``).
    """
    (folder / "img").mkdir(parents=True, exist_ok=True)
    products = []
    for i in range(n_products):
        name = f"img/{i}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", (24 + 4 * i, 20), COLOURS[i % len(COLOURS)]).save(folder / name, quality=95)
        products.append(
            {
                "product_id": f"P{i}",
                "image": name,
                "category": "tops" if i < n_products // 2 else "shoes",
                "colour": "" if i % 3 == 0 else ("red" if i % 2 else "blue"),
                "price": 10.0 + i,
            }
        )
    purchases = []
    for u in range(n_users):
        for j in range(purchases_per_user):
            row: dict[str, Any] = {"user_id": f"u{u}", "product_id": f"P{(u + j) % n_products}"}
            if timestamps:
                row["timestamp"] = 1000 + 10 * j
            purchases.append(row)
    import pandas as pd

    suffix = "parquet" if parquet else "csv"
    paths = folder / f"products.{suffix}", folder / f"interactions.{suffix}"
    for frame, path in zip((pd.DataFrame(products), pd.DataFrame(purchases)), paths):
        if parquet:
            frame.replace("", None).to_parquet(path)
        else:
            frame.to_csv(path, index=False)
    return paths


def utzap_tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Five UT-Zap50K photos (136x102, as the real ones) -> their colours."""
    layout = {
        "Shoes/Oxfords/Clarks/7604379.3.jpg": COLOURS[0],
        "Boots/Knee High/Frye Co/100.jpg": COLOURS[1],
        "Sandals/Flat/Teva/5.jpg": COLOURS[2],
        "Slippers/Slipper Flats/L.B. Evans/9.jpg": COLOURS[3],
        "Shoes/Sneakers and Athletic Shoes/Nike/1.jpg": COLOURS[4],
    }
    for rel, colour in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (136, 102), colour).save(root / rel, quality=95)
    return layout
