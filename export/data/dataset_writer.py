"""Write a dataset folder (format: ``docs/datasets.md``; reader: :mod:`.dataset_folder`).

Images are streamed to ``images_<S>.u8`` as products are added, so an import never holds them all in
memory; the products table (ids, categories, attributes) is small and kept in memory until
:meth:`DatasetWriter.finish`. Everything is written into a sibling temporary folder and moved into
place at the end: a reader never sees half a dataset, and a failed import leaves nothing behind.

Code order of every vocabulary (categories, categorical attribute values) is SORTED by name unless the
caller declares it (``categories=``, ``attribute_values=``); user ids are numbered in first-seen order.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from couturier.export.data.dataset_folder import (
    CONTACT_SHEET,
    FORMAT,
    INTERACTIONS_FILE,
    MANIFEST_FILE,
    ORACLE_NAME,
    PRODUCTS_FILE,
    PROVENANCES,
    QUERIES_FILE,
    SCHEMA_VERSION,
    TEST,
    TRAIN,
    VALIDATION,
    _catalogue,
    _memmap,
    images_file,
)
from couturier.export.data.errors import DataError
from couturier.export.data.fashion_mnist import sha256_file
from couturier.export.data.shoppers import Oracle
from couturier.export.data.stored import write_npz

AttributeValue = str | float | int | None
_EXAMPLES = 5


def split_interactions(users: np.ndarray, timestamps: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """int8 split code per interaction row (0 train, 1 validation, 2 test), per user.

    With ``timestamps``: the user's last interaction by time is test, the one before validation, the
    rest train (DVBPR's protocol; ties and -1 "no time" keep row order, -1 counting as earliest).
    Without: a draw seeded by ``seed`` picks them. A user with fewer than 3 interactions is a
    :class:`DataError` naming the first such users.
    """
    users = np.asarray(users)
    n = len(users)
    if timestamps is not None and len(timestamps) != n:
        raise DataError(f"{len(timestamps)} timestamps for {n} interactions")
    names, codes = np.unique(users, return_inverse=True)
    codes = codes.reshape(-1)
    counts = np.bincount(codes, minlength=len(names))
    few = np.flatnonzero(counts < 3)
    if few.size:
        examples = ", ".join(f"{names[u]!s} ({counts[u]})" for u in few[:_EXAMPLES])
        raise DataError(
            f"{few.size} users have fewer than 3 interactions, too few for a train, a validation and a test "
            f"interaction each (first: {examples})"
        )
    key = (
        np.asarray(timestamps, dtype=np.int64) if timestamps is not None else np.random.default_rng(seed).permutation(n)
    )
    order = np.lexsort((np.arange(n), key, codes))  # by user, then time (or the draw), then row
    ends = np.cumsum(counts)  # one past each user's last sorted position
    from_end = ends[codes[order]] - 1 - np.arange(n)
    split = np.empty(n, dtype=np.int8)
    split[order] = np.where(from_end == 0, TEST, np.where(from_end == 1, VALIDATION, TRAIN))
    return split


def _check_split(split: np.ndarray, users: np.ndarray, user_ids: Sequence[str]) -> None:
    bad = np.flatnonzero(~np.isin(split, (TRAIN, VALIDATION, TEST)))
    if bad.size:
        raise DataError(
            f"{bad.size} invalid split codes (0 train, 1 validation, 2 test); first at row {int(bad[0])}: {split[bad[0]]}"
        )
    for code, name in ((TRAIN, "train"), (VALIDATION, "validation"), (TEST, "test")):
        per_user = np.bincount(users[split == code], minlength=len(user_ids))
        wrong = np.flatnonzero(per_user < 1 if code == TRAIN else per_user != 1)
        if wrong.size:
            rule = "at least one" if code == TRAIN else "exactly one"
            examples = ", ".join(f"{user_ids[u]} ({per_user[u]})" for u in wrong[:_EXAMPLES])
            raise DataError(f"{wrong.size} users do not have {rule} {name} interaction (first: {examples})")


def _is_unknown(value: Any) -> bool:
    """None, an empty string or NaN: an attribute value the product does not have."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(float(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Table:
    """Products (or queries) being written: the image stream and the small per-row columns."""

    def __init__(self, folder: Path, file: str, image_size: int) -> None:
        self.path = folder / file
        self.image_size = image_size
        self.ids: list[str] = []
        self.categories: list[str] = []
        self.attributes: list[Mapping[str, AttributeValue]] = []
        self.digest = hashlib.sha256()
        self._handle: BinaryIO | None = None

    def add(self, product_id: str, category: str, image: np.ndarray, attributes: Mapping[str, AttributeValue]) -> None:
        if self._handle is None:
            self._handle = self.path.open("wb")
        data = np.ascontiguousarray(image).tobytes()
        self._handle.write(data)
        self.digest.update(data)
        self.ids.append(product_id)
        self.categories.append(category)
        self.attributes.append(dict(attributes))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class DatasetWriter:
    """Builds a dataset folder at ``out``; see the module docstring.

    ``out`` must not exist or be empty, unless ``force`` (then the old folder is replaced once the new
    one is complete). ``categories`` and ``attribute_values`` fix the code order of those vocabularies
    (a value outside a declared list is a :class:`DataError`); undeclared ones are sorted.
    Use as a context manager: an exception (or leaving without :meth:`finish`) removes the partial folder.
    """

    def __init__(
        self,
        out: Path | str,
        *,
        image_size: int,
        force: bool = False,
        categories: Sequence[str] | None = None,
        attribute_values: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.out = Path(out)
        if image_size < 8:
            raise DataError(f"image_size must be >= 8, got {image_size}")
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"{self.out} is a file: a dataset needs a folder (choose another --out)")
        if self.out.is_dir() and any(self.out.iterdir()) and not force:
            raise DataError(
                f"{self.out} is not empty: refusing to write a dataset into it (choose another --out, "
                "or pass --force to replace it)"
            )
        self.image_size = image_size
        self.force = force
        self.categories = list(categories) if categories is not None else None
        self.attribute_values = {k: list(v) for k, v in (attribute_values or {}).items()}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self._products = _Table(self.tmp, images_file(image_size), image_size)
        self._queries = _Table(self.tmp, images_file(image_size, queries=True), image_size)
        self._seen: set[str] = set()
        self._interactions: dict[str, np.ndarray] | None = None
        self._done = False

    # -- adding ----------------------------------------------------------------------------------------

    def _add(
        self, table: _Table, product_id: str, category: str, image: np.ndarray, attributes: Mapping[str, AttributeValue]
    ) -> None:
        if self._done:
            raise DataError("this dataset writer has finished or was aborted")
        pid = str(product_id)
        if not pid:
            raise DataError("a product id must not be empty")
        if pid in self._seen:
            raise DataError(f"duplicate product id {pid!r}")
        if _is_unknown(category):
            raise DataError(f"product {pid!r} has no category")
        arr = np.asarray(image)
        s = self.image_size
        if arr.shape != (s, s, 3) or arr.dtype != np.uint8:
            raise DataError(f"product {pid!r}: image must be uint8 ({s}, {s}, 3), got {arr.dtype} {arr.shape}")
        for name in attributes:
            if not name or "/" in name or name != name.strip():
                raise DataError(f"product {pid!r}: invalid attribute name {name!r}")
        self._seen.add(pid)
        table.add(pid, str(category), arr, attributes)

    def add_product(
        self, product_id: str, category: str, image: np.ndarray, attributes: Mapping[str, AttributeValue] = {}
    ) -> None:
        """Add a catalogue product; ``image`` is (S, S, 3) uint8 at ``image_size``, written to disk now."""
        self._add(self._products, product_id, category, image, attributes)

    def add_query(
        self, product_id: str, category: str, image: np.ndarray, attributes: Mapping[str, AttributeValue] = {}
    ) -> None:
        """Add a held-out query product (not in the catalogue; evaluation queries)."""
        self._add(self._queries, product_id, category, image, attributes)

    def set_interactions(
        self,
        user_ids: Sequence[str],
        product_ids: Sequence[str],
        timestamps: Sequence[int] | None = None,
        *,
        split: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        """One row per interaction: user id, product id (a catalogue product), optional unix time.

        ``split`` None: :func:`split_interactions` (by time when there are timestamps, else seeded).
        """
        users_in, products_in = list(map(str, user_ids)), list(map(str, product_ids))
        if len(users_in) != len(products_in):
            raise DataError(f"{len(users_in)} user ids but {len(products_in)} product ids")
        row_of = {pid: i for i, pid in enumerate(self._products.ids)}
        unknown = [(i, pid) for i, pid in enumerate(products_in) if pid not in row_of]
        if unknown:
            examples = ", ".join(f"row {i}: {pid!r}" for i, pid in unknown[:_EXAMPLES])
            raise DataError(f"{len(unknown)} interactions name unknown products (first: {examples})")
        number: dict[str, int] = {}
        users = np.array([number.setdefault(u, len(number)) for u in users_in], dtype=np.int64)
        names = list(number)
        stamps = (
            np.full(len(users), -1, dtype=np.int64)
            if timestamps is None
            else np.asarray(timestamps, dtype=np.int64).reshape(-1)
        )
        if len(stamps) != len(users):
            raise DataError(f"{len(stamps)} timestamps for {len(users)} interactions")
        if (stamps < -1).any():
            raise DataError(f"timestamps must be unix seconds or -1 (none); row {int(np.argmax(stamps < -1))} is not")
        if split is None:
            codes = split_interactions(users, stamps if timestamps is not None else None, seed)
        else:
            codes = np.asarray(split).astype(np.int8).reshape(-1)
            if len(codes) != len(users):
                raise DataError(f"{len(codes)} split codes for {len(users)} interactions")
            _check_split(codes, users, names)
        self._interactions = {
            "user": users.astype(np.int32),
            "product": np.array([row_of[p] for p in products_in], dtype=np.int32),
            "timestamp": stamps,
            "split": codes,
            "user_ids": np.array(names, dtype=str),
        }

    # -- finishing --------------------------------------------------------------------------------------

    def _vocabulary(self) -> list[str]:
        seen = set(self._products.categories) | set(self._queries.categories)
        if self.categories is None:
            return sorted(seen)
        outside = sorted(seen - set(self.categories))
        if outside:
            raise DataError(f"categories {outside} are not among the declared categories {self.categories}")
        return self.categories

    def _attribute_specs(self) -> dict[str, dict[str, Any]]:
        rows = [*self._products.attributes, *self._queries.attributes]
        names = list(dict.fromkeys(name for row in rows for name in row))
        names += [name for name in self.attribute_values if name not in names]
        specs: dict[str, dict[str, Any]] = {}
        for name in names:
            known = [row[name] for row in rows if name in row and not _is_unknown(row[name])]
            if name in self.attribute_values:
                declared = self.attribute_values[name]
                outside = sorted({str(v) for v in known} - set(declared))
                if outside:
                    raise DataError(f"attribute {name!r} has values {outside[:_EXAMPLES]} outside the declared list")
                specs[name] = {"type": "categorical", "values": declared}
            elif known and all(_is_number(v) for v in known):
                specs[name] = {"type": "numeric"}
            else:
                specs[name] = {"type": "categorical", "values": sorted({str(v) for v in known})}
        return specs

    @staticmethod
    def _columns(table: _Table, categories: list[str], specs: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
        code = {name: i for i, name in enumerate(categories)}
        arrays = {
            "product_id": np.array(table.ids, dtype=str),
            "category": np.array([code[c] for c in table.categories], dtype=np.int32),
        }
        for name, spec in specs.items():
            values = [row.get(name) for row in table.attributes]
            if spec["type"] == "numeric":
                arrays[f"attr.{name}"] = np.array(
                    [np.nan if _is_unknown(v) else float(v) for v in values],
                    dtype=np.float64,
                )
            else:
                lookup = {v: i for i, v in enumerate(spec["values"])}
                arrays[f"attr.{name}"] = np.array(
                    [-1 if _is_unknown(v) else lookup[str(v)] for v in values], dtype=np.int32
                )
        return arrays

    def finish(
        self,
        *,
        name: str,
        source: str,
        provenance: str,
        importer: str,
        skipped: Mapping[str, Mapping[str, Any]] | None = None,
        notes: Sequence[str] = (),
        oracle: Oracle | None = None,
        contact_sheet: bool = True,
        simulation: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the tables, the oracle (simulated data only), the contact sheet and ``dataset.json``
        with every file's sha256, then move the folder into place; returns ``out``.

        ``simulation`` (simulated data only) is recorded as the manifest's ``simulation`` entry."""
        if self._done:
            raise DataError("this dataset writer has finished or was aborted")
        try:
            return self._finish(name, source, provenance, importer, skipped, notes, oracle, contact_sheet, simulation)
        except BaseException:
            self.abort()
            raise

    def _finish(
        self,
        name: str,
        source: str,
        provenance: str,
        importer: str,
        skipped: Mapping[str, Mapping[str, Any]] | None,
        notes: Sequence[str],
        oracle: Oracle | None,
        contact_sheet: bool,
        simulation: Mapping[str, Any] | None,
    ) -> Path:
        if provenance not in PROVENANCES:
            raise DataError(f"provenance must be 'real' or 'simulated', got {provenance!r}")
        if provenance == "simulated" and oracle is None:
            raise DataError("simulated data needs its oracle (the planted tastes)")
        if provenance == "real" and (oracle is not None or simulation is not None):
            raise DataError("an oracle and simulation parameters belong to simulated data only")
        if not self._products.ids:
            raise DataError("a dataset needs at least one product")
        self._products.close()
        self._queries.close()
        categories = self._vocabulary()
        specs = self._attribute_specs()
        files: dict[str, str] = {}
        write_npz(self.tmp / PRODUCTS_FILE, self._columns(self._products, categories, specs))
        files[self._products.path.name] = self._products.digest.hexdigest()
        if self._queries.ids:
            write_npz(self.tmp / QUERIES_FILE, self._columns(self._queries, categories, specs))
            files[self._queries.path.name] = self._queries.digest.hexdigest()
        inter = self._interactions
        if inter is not None:
            write_npz(self.tmp / INTERACTIONS_FILE, inter)
            if oracle is not None and oracle.n_users != len(inter["user_ids"]):
                raise DataError(f"the oracle has {oracle.n_users} users, the interactions {len(inter['user_ids'])}")
        if oracle is not None:
            oracle.save(self.tmp, ORACLE_NAME)
        split = inter["split"] if inter is not None else np.zeros(0, np.int8)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "source": source,
            "provenance": provenance,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "importer": importer,
            "categories": categories,
            "attributes": specs,
            "image_size": self.image_size,
            "counts": {
                "products": len(self._products.ids),
                "queries": len(self._queries.ids),
                "users": len(inter["user_ids"]) if inter is not None else 0,
                "interactions": len(split),
                "train": int((split == TRAIN).sum()),
                "validation": int((split == VALIDATION).sum()),
                "test": int((split == TEST).sum()),
            },
            "files": {},
            "skipped": {kind: dict(entry) for kind, entry in (skipped or {}).items()},
            "notes": list(notes),
        }
        if simulation is not None:
            manifest["simulation"] = dict(simulation)
        if contact_sheet:
            self._contact_sheet(manifest)
        for entry in sorted(self.tmp.iterdir()):
            if entry.name not in files:
                files[entry.name] = sha256_file(entry)
        manifest["files"] = dict(sorted(files.items()))
        (self.tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        self._move_into_place()
        self._done = True
        return self.out

    def _contact_sheet(self, manifest: Mapping[str, Any]) -> None:
        from couturier.export.data.report import write_contact_sheet
        from couturier.export.data.stored import read_npz

        n = len(self._products.ids)
        images = _memmap(self._products.path, n, self.image_size)
        catalogue = _catalogue(manifest, read_npz(self.tmp / PRODUCTS_FILE), images, None, "products")
        title = f"{manifest['name']} ({manifest['provenance']} data): {manifest['source']}"
        write_contact_sheet(
            catalogue, self.tmp / CONTACT_SHEET, title=title if len(title) <= 120 else title[:119] + "…"
        )
        del images

    def _move_into_place(self) -> None:
        out = self.out
        if out.is_dir() and any(out.iterdir()):
            if not self.force:
                raise DataError(f"{out} is no longer empty: refusing to write a dataset into it")
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            self.tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            self.tmp.rename(out)

    def abort(self) -> None:
        """Remove the partial folder; ``out`` stays as it was."""
        self._products.close()
        self._queries.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()
