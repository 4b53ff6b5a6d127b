"""Importers: a shop's tables, DVBPR's ``.npy`` and UT-Zap50K folders -> couturier dataset folders.

Each importer reads its source as untrusted input (restricted unpickler, checked image decoding),
writes a new dataset folder through :class:`~couturier.export.data.dataset_writer.DatasetWriter`, and
either refuses bad rows (:class:`ImportRefused`, nothing written) or, with ``skip_invalid``, imports
the rest and records what it skipped in the manifest.

Names are loaded on first use: image-decoding worker processes import this package and should not
pay for pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from couturier.export.data.importers.dvbpr import import_dvbpr
    from couturier.export.data.importers.images import IMPORT_FORMATS, MAX_PIXELS, ImageDecodeError, decode_image
    from couturier.export.data.importers.problems import ImportRefused
    from couturier.export.data.importers.safe_pickle import UnsafePickleError, load_object_npy
    from couturier.export.data.importers.table import import_table
    from couturier.export.data.importers.utzap50k import import_utzap50k

_MODULES = {
    "import_dvbpr": "dvbpr",
    "IMPORT_FORMATS": "images",
    "MAX_PIXELS": "images",
    "ImageDecodeError": "images",
    "decode_image": "images",
    "ImportRefused": "problems",
    "UnsafePickleError": "safe_pickle",
    "load_object_npy": "safe_pickle",
    "import_table": "table",
    "import_utzap50k": "utzap50k",
}
__all__ = [
    "IMPORT_FORMATS",
    "MAX_PIXELS",
    "ImageDecodeError",
    "ImportRefused",
    "UnsafePickleError",
    "decode_image",
    "import_dvbpr",
    "import_table",
    "import_utzap50k",
    "load_object_npy",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
