"""How the data layer stores a table: ``<name>.npz`` (arrays, written atomically) next to ``<name>.json`` (metadata)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from couturier.export.data.errors import NotPreparedError


def save_stored(directory: Path | str, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``<name>.npz`` (through a temporary file, so a reader never sees half of it) and ``<name>.json``;
    returns the npz path."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    npz = folder / f"{name}.npz"
    tmp = folder / f".{name}.tmp.npz"
    named: dict[str, Any] = dict(arrays)
    np.savez(tmp, **named)
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
    with np.load(npz, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return arrays, meta
