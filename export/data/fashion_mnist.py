"""Loader for the real Fashion-MNIST shipped by the Debian package ``dataset-fashion-mnist``.

The four files are gzip'd idx files (big-endian header: two zero bytes, a type code, the number
of dimensions, then one uint32 per dimension). Each ``.gz`` is checked against the sha256
recorded below before it is parsed.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from couturier.export.data.errors import DatasetCorruptError, DatasetMissingError
from couturier.export.data.paths import fashion_mnist_dir

Split = Literal["train", "test"]

#: Class names in label order (0..9).
FM_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: File names per split: (images, labels).
FM_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: sha256 of each ``.gz`` as installed by ``dataset-fashion-mnist``.
FM_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

FM_SPLIT_SIZES: dict[str, int] = {"train": 60_000, "test": 10_000}
FM_IMAGE_SHAPE = (28, 28)

_INSTALL_HINT = (
    "Fashion-MNIST comes from the Debian package 'dataset-fashion-mnist'; install it with "
    "`apt-get install dataset-fashion-mnist`, or point COUTURIER_FASHION_MNIST_DIR at a folder "
    "holding the four *-ubyte.gz files"
)

# idx type code -> numpy dtype (big-endian where it matters).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class FashionMNISTSplit:
    """One split: ``images`` (N, 28, 28) uint8 (0 = background) and ``labels`` (N,) int64."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class FashionMNIST:
    """Both splits of Fashion-MNIST plus the folder they were read from."""

    train: FashionMNISTSplit
    test: FashionMNISTSplit
    root: Path

    def split(self, name: str) -> FashionMNISTSplit:
        """The split called ``name`` ("train" or "test")."""
        if name not in FM_FILES:
            raise ValueError(f"unknown Fashion-MNIST split {name!r}; expected 'train' or 'test'")
        return self.train if name == "train" else self.test


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_idx(raw: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse an (uncompressed) idx blob into an array; ``name`` is used in error messages."""
    if len(raw) < 4:
        raise DatasetCorruptError(f"{name}: too short for an idx header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise DatasetCorruptError(f"{name}: bad idx magic number {raw[:4].hex()} (must start with 0000)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise DatasetCorruptError(f"{name}: unknown idx type code 0x{type_code:02x}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetCorruptError(f"{name}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(raw) - header_len
    if payload != expected:
        raise DatasetCorruptError(
            f"{name}: idx header says {dims} ({expected} data bytes) but the file holds {payload}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)


def _read_gz_idx(path: Path, *, verify_checksum: bool) -> np.ndarray:
    if not path.is_file():
        raise DatasetMissingError(f"missing Fashion-MNIST file {path}. {_INSTALL_HINT}")
    if verify_checksum:
        expected = FM_SHA256[path.name]
        actual = sha256_file(path)
        if actual != expected:
            raise DatasetCorruptError(
                f"{path}: sha256 mismatch (expected {expected}, got {actual}); the file is corrupt "
                "or not the Fashion-MNIST release. Reinstall with "
                "`apt-get install --reinstall dataset-fashion-mnist`"
            )
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetCorruptError(f"{path}: not a valid gzip file ({exc})") from exc
    return parse_idx(raw, name=str(path))


def _load_split(root: Path, split: str, *, verify_checksums: bool) -> FashionMNISTSplit:
    image_file, label_file = FM_FILES[split]
    images = _read_gz_idx(root / image_file, verify_checksum=verify_checksums)
    labels = _read_gz_idx(root / label_file, verify_checksum=verify_checksums)
    n = FM_SPLIT_SIZES[split]
    if images.dtype != np.uint8 or images.shape != (n, *FM_IMAGE_SHAPE):
        raise DatasetCorruptError(
            f"{root / image_file}: expected uint8 images of shape {(n, *FM_IMAGE_SHAPE)}, "
            f"got {images.dtype} {images.shape}"
        )
    if labels.shape != (n,):
        raise DatasetCorruptError(f"{root / label_file}: expected {n} labels, got shape {labels.shape}")
    if labels.size and int(labels.max()) > 9:
        raise DatasetCorruptError(f"{root / label_file}: labels must be 0..9, found {int(labels.max())}")
    images = np.array(images, dtype=np.uint8)
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return FashionMNISTSplit(name=split, images=images, labels=labels)


_CACHE: dict[tuple[str, bool, tuple[tuple[int, int], ...]], FashionMNIST] = {}


def load_fashion_mnist(root: Path | str | None = None, *, verify_checksums: bool = True) -> FashionMNIST:
    """Read and validate both splits from ``root`` (default: :func:`fashion_mnist_dir`).

    Arrays are read-only and cached per folder (keyed by the files' sizes and mtimes).
    Raises :class:`DatasetMissingError` or :class:`DatasetCorruptError` with a message naming the
    file and the problem.
    """
    folder = Path(root) if root is not None else fashion_mnist_dir()
    if not folder.is_dir():
        raise DatasetMissingError(f"Fashion-MNIST folder {folder} does not exist. {_INSTALL_HINT}")
    names = [name for pair in FM_FILES.values() for name in pair]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetMissingError(f"Fashion-MNIST folder {folder} lacks {', '.join(missing)}. {_INSTALL_HINT}")
    stats = tuple((st.st_size, st.st_mtime_ns) for st in ((folder / n).stat() for n in names))
    key = (str(folder.resolve()), verify_checksums, stats)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = FashionMNIST(
            train=_load_split(folder, "train", verify_checksums=verify_checksums),
            test=_load_split(folder, "test", verify_checksums=verify_checksums),
            root=folder,
        )
    return _CACHE[key]
