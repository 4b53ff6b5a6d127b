"""How the data layer stores tables.

* :func:`write_npz` / :func:`read_npz`: one ``.npz`` of named arrays, written byte-for-byte
  deterministically (fixed zip timestamps, no pickles), so the same data always has the same sha256.
* :func:`save_stored` / :func:`load_stored`: ``<name>.npz`` (arrays) next to ``<name>.json`` (metadata).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from couturier.export.data.errors import DatasetCorruptError, NotPreparedError

#: Zip entry timestamp of every array (the earliest a zip can hold): the file's bytes depend on the data only.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path | str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` readable by ``np.load(allow_pickle=False)``.

    Deterministic: entries in the given order, fixed timestamps; object arrays are refused.
    """
    out = Path(path)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise TypeError(f"{out.name}: array {key!r} has dtype object; store str or numbers")
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
    return out


def read_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickles); :class:`DatasetCorruptError` when it cannot be read."""
    npz = Path(path)
    try:
        with np.load(npz, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetCorruptError(f"{npz}: not a readable .npz ({exc})") from None


def save_stored(directory: Path | str, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``<name>.npz`` (through a temporary file, so a reader never sees half of it) and ``<name>.json``;
    returns the npz path."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    npz = folder / f"{name}.npz"
    tmp = folder / f".{name}.tmp.npz"
    write_npz(tmp, arrays)
    tmp.replace(npz)
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return npz


def load_stored(directory: Path | str, name: str, what: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) written by :func:`save_stored`; :class:`NotPreparedError` naming ``what`` when missing."""
    folder = Path(directory)
    npz, js = folder / f"{name}.npz", folder / f"{name}.json"
    if not npz.is_file() or not js.is_file():
        raise NotPreparedError(f"no {what} in {folder} (expected {npz.name} and {js.name})")
    meta = json.loads(js.read_text())
    return read_npz(npz), meta
