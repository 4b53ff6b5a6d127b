"""Load a pickled ``.npy`` object array (DVBPR's files) without letting the pickle run code.

A pickle is a program: any global it names is imported and may be called. :class:`RestrictedUnpickler`
resolves only the globals a numpy object array of plain data needs, found by pickling such arrays
with protocols 2 to 5 under numpy 1.x/2.x and Python 2 (module names differ between them):

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct`` and ``numpy.ndarray``
  (arrays; ``_reconstruct`` is accepted only for an empty ``ndarray``, as numpy writes it),
* ``numpy.dtype``, ``numpy[._]core.multiarray.scalar`` (numpy scalars, e.g. ``np.int64(3)``),
* ``numpy[._]core.numeric._frombuffer`` (protocol 5 arrays),
* ``set``, ``frozenset``, ``complex``, ``bytearray`` (``__builtin__`` in Python 2 files; bytearray only
  from bytes or latin-1 text), and ``_codecs.encode`` restricted to latin-1 text (how Python 3 writes
  bytes with protocols 0 to 2).

Everything else -- ``os.system``, ``subprocess.*``, ``builtins.eval``, ``getattr``, any class --
raises :class:`UnsafePickleError` before it is imported, so its payload never runs. Dicts, lists,
tuples, str, bytes, ints, floats, bools and None need no global at all.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy._core.multiarray as _multiarray
import numpy._core.numeric as _numeric
from numpy.lib import format as npy_format

from couturier.export.data.errors import DataFormatError, DatasetMissingError

_NPY_MAGIC = b"\x93NUMPY"


class UnsafePickleError(DataFormatError):
    """A pickle asked for a global outside the admitted set (it may be malicious); nothing ran."""


class _ArrayClass:
    """Stands for ``numpy.ndarray`` inside the pickle: usable only as ``_reconstruct``'s first argument."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_ARRAY_CLASS = _ArrayClass()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _ARRAY_CLASS:
        raise UnsafePickleError(f"_reconstruct is admitted only for numpy.ndarray, not {subtype!r}")
    if not isinstance(shape, tuple) or any(not isinstance(n, int) for n in shape) or int(np.prod(shape)) != 0:
        raise UnsafePickleError(f"_reconstruct is admitted only for an empty array (numpy writes (0,)), not {shape!r}")
    return cast(np.ndarray, _multiarray._reconstruct(np.ndarray, shape, dtype))


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise UnsafePickleError("_codecs.encode is admitted only for text")
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode is admitted only with latin-1, not {encoding!r}")
    return text.encode("latin-1")


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    if isinstance(data, bytes) and encoding is None:
        return bytearray(data)
    return bytearray(_latin1(data, encoding))


_NUMPY_CORE = {"_reconstruct": _reconstruct, "scalar": _multiarray.scalar}
#: (module, name) -> the object the pickle gets. Nothing outside this table is ever imported.
ADMITTED: dict[tuple[str, str], Any] = {
    **{
        (module, name): obj
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, obj in _NUMPY_CORE.items()
    },
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,  # type: ignore[attr-defined]
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,  # type: ignore[attr-defined]
    ("numpy", "ndarray"): _ARRAY_CLASS,
    ("numpy", "dtype"): np.dtype,
    **{
        (module, name): obj
        for module in ("builtins", "__builtin__")
        for name, obj in (("set", set), ("frozenset", frozenset), ("complex", complex))
    },
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "bytearray"): _bytearray,
    ("_codecs", "encode"): _latin1,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only plain data and numpy arrays (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"the pickle asks for {module}.{name}, which is not a plain container, number, string or numpy "
                "array; it was refused and nothing ran (the file may be malicious)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("the pickle uses persistent ids, which plain data never needs")


def restricted_loads(data: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding='bytes'``: Python 2 str -> bytes)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_object_npy(path: Path | str, *, encoding: str = "bytes") -> Any:
    """Read a ``.npy`` file (or a bare pickle, as ``np.load`` also accepts) without running code.

    Non-object ``.npy`` arrays are read by numpy with pickles disabled; object arrays and bare
    pickles go through :class:`RestrictedUnpickler`. Raises :class:`UnsafePickleError` for a
    forbidden global, :class:`DataFormatError` for anything unreadable.
    """
    file = Path(path)
    if not file.is_file():
        raise DatasetMissingError(f"{file} does not exist")
    try:
        with file.open("rb") as fh:
            if fh.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                fh.seek(0)
                return RestrictedUnpickler(fh, encoding=encoding).load()
            fh.seek(0)
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise DataFormatError(f"{file}: .npy format version {version} is not supported (1.0 and 2.0 are)")
            if not dtype.hasobject:
                return np.load(file, allow_pickle=False)
            array = RestrictedUnpickler(fh, encoding=encoding).load()
    except (UnsafePickleError, DataFormatError) as exc:
        raise type(exc)(f"{file}: {exc}") from None
    except Exception as exc:  # a broken or hostile stream fails in many ways; none of them ran code
        raise DataFormatError(f"{file}: not a readable .npy or pickle file ({type(exc).__name__}: {exc})") from None
    if not isinstance(array, np.ndarray):
        raise DataFormatError(f"{file}: the .npy header announces an array, the pickle holds a {type(array).__name__}")
    if array.shape != shape:
        raise DataFormatError(f"{file}: the .npy header announces shape {shape}, the pickle holds {array.shape}")
    return array
