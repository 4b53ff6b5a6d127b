"""Read a dataset folder: couturier's own format for a catalogue, its images and its interactions.

The format is described in ``docs/datasets.md``. A dataset folder is READ-ONLY for everything but the
importer that wrote it (:mod:`couturier.export.data.dataset_writer`): :func:`open_dataset` never
writes into it. Images are memory-mapped read-only; a copy at another resolution, or with the
held-out rows taken out, is built once in a cache folder outside the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from couturier.export.data.catalogue import COLOUR_ATTRIBUTE, GARMENT_ATTRIBUTE, Catalogue
from couturier.export.data.errors import DataError, DatasetCorruptError, NotPreparedError
from couturier.export.data.fashion_mnist import FM_CLASSES, sha256_file
from couturier.export.data.interactions import Interactions
from couturier.export.data.shoppers import Oracle
from couturier.export.data.stored import read_npz

if TYPE_CHECKING:
    from couturier.export.data.dataset import Profile

FORMAT = "couturier-dataset"
SCHEMA_VERSION = 1
MANIFEST_FILE = "dataset.json"
PRODUCTS_FILE = "products.npz"
QUERIES_FILE = "queries.npz"
INTERACTIONS_FILE = "interactions.npz"
ORACLE_NAME = "oracle"  # oracle.npz + oracle.json (simulated data only)
ORACLE_FILES = (f"{ORACLE_NAME}.npz", f"{ORACLE_NAME}.json")
CONTACT_SHEET = "contact_sheet.png"
PROVENANCES = ("real", "simulated")
#: Split codes of ``interactions.npz`` ``split``.
TRAIN, VALIDATION, TEST = 0, 1, 2
#: Count keys of the manifest.
COUNT_KEYS = ("products", "queries", "users", "interactions", "train", "validation", "test")
#: Without queries.npz, this share of the products (seeded draw) is held out as queries, in memory only.
HELDOUT_FRACTION = 0.05
HELDOUT_SEED = 0
CACHE_DIR_ENV = "COUTURIER_CACHE_DIR"
#: Rows resized per step when a derived image store is built (bounded memory).
RESIZE_CHUNK = 1024
IMPORT_HINT = (
    "make one with `couturier data import-table --products P.csv --interactions I.csv --out DIR`, "
    "`couturier data import-dvbpr FILE --out DIR` or `couturier data import-utzap50k ROOT --out DIR`, "
    "or `couturier data prepare --data-dir DIR` for the simulated demo data"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EXAMPLES = 3  # offending rows named per problem


class NotADatasetError(NotPreparedError):
    """A folder that is not a dataset folder (no ``dataset.json``): the message says how to make one."""


def images_file(image_size: int, *, queries: bool = False) -> str:
    """Name of an image store: ``images_<S>.u8`` or ``queries_images_<S>.u8``."""
    return f"{'queries_' if queries else ''}images_{image_size}.u8"


def is_legacy_prepared(folder: Path) -> bool:
    """True when ``folder`` holds prepared data of the format before dataset folders (``manifest.json``
    and ``catalogue.npz``, no ``dataset.json``)."""
    return (
        not (folder / MANIFEST_FILE).exists()
        and (folder / "manifest.json").is_file()
        and (folder / "catalogue.npz").is_file()
    )


def _not_a_dataset(folder: Path) -> NotADatasetError:
    if not folder.exists():
        return NotADatasetError(f"dataset folder {folder} does not exist: {IMPORT_HINT}")
    if not folder.is_dir():
        return NotADatasetError(f"{folder} is a file, not a dataset folder: {IMPORT_HINT}")
    if is_legacy_prepared(folder):
        return NotADatasetError(
            f"{folder} holds prepared data of an old format (manifest.json, catalogue.npz; no {MANIFEST_FILE}): "
            f"re-run `couturier data prepare --force --data-dir {folder}` to rebuild it as a dataset folder"
        )
    return NotADatasetError(f"{folder} is not a dataset folder (no {MANIFEST_FILE}): {IMPORT_HINT}")


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The parsed ``dataset.json`` of a folder; :class:`NotADatasetError` when there is none."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise _not_a_dataset(folder)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetCorruptError(f"{manifest_path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DatasetCorruptError(f"{manifest_path} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def dataset_fingerprint(path: Path | str) -> str:
    """sha256 over the manifest's file checksums (file name and sha256, sorted by name; the contact sheet,
    a picture of the data whose pixels depend on the font renderer, left out): what identifies a
    dataset's content. The same data written twice has the same fingerprint."""
    files = read_manifest(path).get("files", {})
    digest = hashlib.sha256()
    for name in sorted(files):
        if name != CONTACT_SHEET:
            digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


def default_cache_root() -> Path:
    """``$COUTURIER_CACHE_DIR`` if set, else ``./var/cache/datasets`` relative to the current directory."""
    value = os.environ.get(CACHE_DIR_ENV)
    return Path(value) if value else Path.cwd() / "var" / "cache" / "datasets"


def dataset_summary(manifest: Mapping[str, Any]) -> str:
    """One line naming a dataset, its provenance and counts."""
    counts = manifest.get("counts", {})
    attrs = ", ".join(manifest.get("attributes", {})) or "none"
    inter = (
        f"{counts.get('users', 0)} users, {counts.get('interactions', 0)} interactions "
        f"(train {counts.get('train', 0)}, validation {counts.get('validation', 0)}, test {counts.get('test', 0)})"
        if counts.get("interactions")
        else "no interactions (catalogue only)"
    )
    return (
        f"{manifest.get('provenance')} dataset {manifest.get('name')!r} ({manifest.get('source')}): "
        f"{counts.get('products', 0)} products, {counts.get('queries', 0)} queries, {inter}; "
        f"{len(manifest.get('categories', []))} categories; attributes: {attrs}; "
        f"{manifest.get('image_size')} px images"
    )


# -- the dataset ------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """An opened dataset folder; duck-compatible with the old ``PreparedData``.

    ``catalogue.images`` is a read-only memmap. ``heldout`` is ``queries.npz`` when the dataset has
    queries, else a seeded 5 % of the products taken out of ``catalogue`` (in memory only).
    """

    data_dir: Path
    manifest: dict[str, Any]
    name: str
    source: str
    provenance: str  # "real" | "simulated"
    categories: tuple[str, ...]
    attributes: dict[str, dict[str, Any]]  # from the manifest
    catalogue: Catalogue
    heldout: Catalogue
    interactions: Interactions | None
    oracle: Oracle | None
    profile: Profile | None = None  # the data profile of the simulated world (None for other data)
    image_size: int = 0  # the resolution served (the stored one unless open_dataset was asked for another)
    cache_dir: Path | None = None  # where derived images live (None: none were needed)
    notes: list[str] = field(default_factory=list)  # what open_dataset did (held-out split, resizing)

    @property
    def is_simulated(self) -> bool:
        return self.provenance == "simulated"

    @property
    def fingerprint(self) -> str:
        """:func:`dataset_fingerprint` of the folder."""
        return dataset_fingerprint(self.data_dir)


def open_dataset(
    path: Path | str, *, image_size: int | None = None, cache_dir: Path | str | None = None, verify: bool = False
) -> Dataset:
    """Open a dataset folder for reading; never writes into it.

    ``image_size`` other than the stored one: a resized copy of the images is built once (Pillow,
    chunked) under ``cache_dir`` (default :func:`default_cache_root`), in a sub-folder
    ``<name>-<fingerprint[:12]>``, and memory-mapped from there. ``verify`` re-hashes every file
    against the manifest. Raises :class:`NotADatasetError` for a folder that is not a dataset and
    :class:`DatasetCorruptError` naming every problem of a damaged one.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    reader = _Reader(folder, manifest)
    problems = reader.problems(checksums=verify)
    if problems:
        raise DatasetCorruptError(
            f"{folder} is not a valid dataset ({len(problems)} problems; `couturier data validate {folder}` lists "
            "them):\n  - " + "\n  - ".join(problems)
        )
    stored = int(manifest["image_size"])
    size = stored if image_size is None else int(image_size)
    if size < 8:
        raise DataError(f"image_size must be >= 8, got {size}")
    cache = _cache_folder(folder, manifest, cache_dir)
    simulated = manifest["provenance"] == "simulated"
    notes: list[str] = []
    used_cache = False

    products = reader.products
    n = len(products["product_id"])
    source_images = _memmap(folder / images_file(stored), n, stored)
    interactions = reader.interactions
    if reader.has_queries:
        queries = reader.queries
        q = len(queries["product_id"])
        query_images = _memmap(folder / images_file(stored, queries=True), q, stored)
        if size != stored:
            query_images = _derived(query_images, None, size, cache / images_file(size, queries=True))
            used_cache = True
        heldout = _catalogue(manifest, queries, query_images, None, "queries")
        rows = None
    else:
        held, rows = _heldout_rows(n, interactions)
        held_images = _in_memory(source_images, held, size)
        heldout = _catalogue(manifest, products, held_images, held, "products")
        heldout.metadata["heldout"] = f"seeded {HELDOUT_FRACTION:.0%} of the products (seed {HELDOUT_SEED})"
        notes.append(
            f"no queries.npz: {len(held)} products (seeded {HELDOUT_FRACTION:.0%}, products without validation or "
            "test interactions first) are held out as queries and left out of the catalogue"
        )
    if size != stored or rows is not None:
        name = images_file(size) if rows is None else f"catalogue_images_{size}_{_rows_digest(rows)}.u8"
        images = _derived(source_images, rows, size, cache / name)
        used_cache = True
    else:
        images = source_images
    catalogue = _catalogue(manifest, products, images, rows, "products")
    if size != stored:
        notes.append(f"images resized from {stored} to {size} px (cached in {cache})")

    result_interactions = None
    if interactions is not None:
        result_interactions = _interactions(manifest, interactions, n, rows)
        dropped = result_interactions.metadata.get("train_rows_dropped_for_heldout", 0)
        if dropped:
            notes.append(f"{dropped} train interactions of held-out products left out")
    oracle = Oracle.load(folder, ORACLE_NAME) if simulated else None
    return Dataset(
        data_dir=folder,
        manifest=manifest,
        name=str(manifest["name"]),
        source=str(manifest["source"]),
        provenance=str(manifest["provenance"]),
        categories=tuple(manifest["categories"]),
        attributes=dict(manifest["attributes"]),
        catalogue=catalogue,
        heldout=heldout,
        interactions=result_interactions,
        oracle=oracle,
        profile=_profile(manifest),
        image_size=size,
        cache_dir=cache if used_cache else None,
        notes=notes,
    )


def validate_dataset(path: Path | str) -> list[str]:
    """Every problem of a dataset folder (checksums included); ``[]`` when it is valid."""
    folder = Path(path)
    try:
        manifest = read_manifest(folder)
    except DataError as exc:
        return [str(exc)]
    return _Reader(folder, manifest).problems(checksums=True)


# -- building the in-memory view --------------------------------------------------------------------


def _profile(manifest: Mapping[str, Any]) -> Profile | None:
    fields = (manifest.get("simulation") or {}).get("profile")
    if manifest.get("provenance") != "simulated" or not isinstance(fields, dict):
        return None
    from couturier.export.data.dataset import Profile

    return Profile(**fields)


def _cache_folder(folder: Path, manifest: Mapping[str, Any], cache_dir: Path | str | None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(manifest.get("name", "dataset")))[:60] or "dataset"
    cache = root / f"{name}-{dataset_fingerprint(folder)[:12]}"
    if cache.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"the cache folder {cache} is inside the dataset {folder}: a dataset folder is read-only")
    return cache


def _memmap(path: Path, n: int, size: int) -> np.ndarray:
    if n == 0:
        empty = np.zeros((0, size, size, 3), dtype=np.uint8)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, size, size, 3))


def _resize(block: np.ndarray, size: int) -> np.ndarray:
    if block.shape[1] == size:
        return np.asarray(block)
    out = np.empty((len(block), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(block):
        out[i] = np.asarray(Image.fromarray(np.asarray(image)).resize((size, size), Image.Resampling.LANCZOS))
    return out


def _in_memory(source: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    images = _resize(np.asarray(source[rows]), size) if len(rows) else np.zeros((0, size, size, 3), np.uint8)
    images.flags.writeable = False
    return images


def _rows_digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:12]


def _derived(source: np.ndarray, rows: np.ndarray | None, size: int, target: Path) -> np.ndarray:
    """Memmap of ``source[rows]`` at ``size`` px, stored once at ``target`` (built chunk by chunk)."""
    n = len(source) if rows is None else len(rows)
    if n == 0:
        return _memmap(target, 0, size)
    if not (target.is_file() and target.stat().st_size == n * size * size * 3):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with partial.open("wb") as handle:
                for start in range(0, n, RESIZE_CHUNK):
                    stop = min(n, start + RESIZE_CHUNK)
                    block = source[start:stop] if rows is None else source[rows[start:stop]]
                    handle.write(np.ascontiguousarray(_resize(np.asarray(block), size)).tobytes())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return _memmap(target, n, size)


def _heldout_rows(n: int, interactions: Mapping[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, catalogue rows), both sorted: a seeded draw of 5 % of the products, preferring
    products without interactions, then products with train interactions only; products that are
    some user's validation or test item are never held out."""
    want = min(n - 1, max(1, round(HELDOUT_FRACTION * n))) if n >= 2 else 0
    tier = np.zeros(n, dtype=np.int64)
    if interactions is not None:
        product, split = interactions["product"].astype(np.int64), interactions["split"]
        tier[product[split == TRAIN]] = 1
        tier[product[split != TRAIN]] = 2
    draw = np.random.default_rng(HELDOUT_SEED).random(n)
    order = np.lexsort((draw, tier))
    held = np.sort(order[tier[order] < 2][:want])
    keep = np.setdiff1d(np.arange(n, dtype=np.int64), held)
    return held.astype(np.int64), keep


def _catalogue(
    manifest: Mapping[str, Any], table: Mapping[str, np.ndarray], images: np.ndarray, rows: np.ndarray | None, name: str
) -> Catalogue:
    pick = (lambda a: np.asarray(a)) if rows is None else (lambda a: np.asarray(a)[rows])
    n = len(images)
    simulated = manifest["provenance"] == "simulated"
    attributes: dict[str, np.ndarray] = {}
    values: dict[str, tuple[str, ...]] = {}
    numeric: dict[str, np.ndarray] = {}
    for attr, spec in manifest["attributes"].items():
        column = pick(table[f"attr.{attr}"])
        if spec["type"] == "categorical":
            attributes[attr] = column.astype(np.int64)
            values[attr] = tuple(spec["values"])
        else:
            numeric[attr] = column.astype(np.float64)
    unknown = np.full(n, -1, dtype=np.int64)
    garment_is_fm = simulated and values.get(GARMENT_ATTRIBUTE) == FM_CLASSES
    return Catalogue(
        product_ids=pick(table["product_id"]).astype(str),
        images=images,
        category=pick(table["category"]).astype(np.int64),
        fm_class=attributes[GARMENT_ATTRIBUTE] if garment_is_fm else unknown,
        colour=attributes.get(COLOUR_ATTRIBUTE, unknown),
        source_split=np.repeat(np.array([name]), n),
        source_index=np.arange(n, dtype=np.int64) if rows is None else rows.astype(np.int64),
        category_names=tuple(manifest["categories"]),
        colour_names=values.get(COLOUR_ATTRIBUTE, ()),
        metadata={
            "dataset": manifest["name"],
            "source": manifest["source"],
            "provenance": manifest["provenance"],
            "table": name,
            "image_size": int(images.shape[1]),
            **({"simulated colours": "yes"} if simulated and COLOUR_ATTRIBUTE in values else {}),
        },
        attributes=attributes,
        attribute_values=values,
        numeric_attributes=numeric,
    )


def _interactions(
    manifest: Mapping[str, Any], table: Mapping[str, np.ndarray], n_products: int, rows: np.ndarray | None
) -> Interactions:
    product = table["product"].astype(np.int64)
    users, split = table["user"].astype(np.int64), table["split"]
    metadata: dict[str, Any] = {"dataset": manifest["name"], "provenance": manifest["provenance"]}
    if manifest["provenance"] == "simulated":
        metadata["simulated"] = "yes (simulated shoppers with planted tastes)"
    n_items = n_products
    if rows is not None:
        remap = np.full(n_products, -1, dtype=np.int64)
        remap[rows] = np.arange(len(rows))
        product = remap[product]
        kept = product >= 0  # held-out products are train-only (see _heldout_rows)
        metadata["train_rows_dropped_for_heldout"] = int((~kept).sum())
        users, product, split = users[kept], product[kept], split[kept]
        n_items = len(rows)
    return Interactions.from_rows(users, product, split, user_ids=table["user_ids"], n_items=n_items, metadata=metadata)


# -- checking ---------------------------------------------------------------------------------------


def _first(examples: Iterable[str]) -> str:
    """The first few of ``examples``, comma-separated."""
    return ", ".join(list(examples)[:_EXAMPLES])


class _Reader:
    """Loads a dataset folder's tables once and lists its problems."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder, self.manifest = folder, manifest
        self._tables: dict[str, dict[str, np.ndarray] | None] = {}

    def _table(self, file: str) -> dict[str, np.ndarray] | None:
        if file not in self._tables:
            path = self.folder / file
            self._tables[file] = read_npz(path) if path.is_file() else None
        return self._tables[file]

    @property
    def products(self) -> dict[str, np.ndarray]:
        table = self._table(PRODUCTS_FILE)
        assert table is not None  # problems() reports a missing table first
        return table

    @property
    def has_queries(self) -> bool:
        return int(self.manifest["counts"]["queries"]) > 0

    @property
    def queries(self) -> dict[str, np.ndarray]:
        table = self._table(QUERIES_FILE)
        assert table is not None
        return table

    @property
    def interactions(self) -> dict[str, np.ndarray] | None:
        counts = self.manifest["counts"]
        return self._table(INTERACTIONS_FILE) if counts["interactions"] or counts["users"] else None

    def problems(self, *, checksums: bool) -> list[str]:
        found = _manifest_problems(self.manifest)
        if found:
            return found  # the rest would only repeat what a broken manifest causes
        found += self._file_problems(checksums)
        for file, queries in ((PRODUCTS_FILE, False), (QUERIES_FILE, True)):
            if queries and not self.has_queries:
                continue
            try:
                table = self._table(file)
            except DataError as exc:
                found.append(str(exc))
                continue
            if table is not None:
                found += self._product_problems(file, table, queries)
        if INTERACTIONS_FILE in self.expected_files() or (self.folder / INTERACTIONS_FILE).is_file():
            try:
                inter = self._table(INTERACTIONS_FILE)
            except DataError as exc:
                found.append(str(exc))
            else:
                if inter is not None:
                    found += self._interaction_problems(inter)
        if self.manifest["provenance"] == "simulated" and all((self.folder / f).is_file() for f in ORACLE_FILES):
            found += self._oracle_problems()
        return found

    def expected_files(self) -> list[str]:
        """The files a dataset with this manifest must have."""
        m = self.manifest
        size, counts = int(m["image_size"]), m["counts"]
        files = [PRODUCTS_FILE, images_file(size)]
        if counts["queries"]:
            files += [QUERIES_FILE, images_file(size, queries=True)]
        if counts["interactions"] or counts["users"]:
            files.append(INTERACTIONS_FILE)
        if m["provenance"] == "simulated":
            files += list(ORACLE_FILES)
        return files

    def _file_problems(self, checksums: bool) -> list[str]:
        found: list[str] = []
        listed: dict[str, str] = self.manifest["files"]
        provenance = self.manifest["provenance"]
        expected = self.expected_files()
        reported = {MANIFEST_FILE, *listed, *expected}
        for name in expected:
            if name in listed:
                continue
            if (self.folder / name).is_file():
                found.append(f"{name} is not listed in {MANIFEST_FILE} files")
            else:
                why = " (provenance 'simulated' needs the oracle)" if name in ORACLE_FILES else ""
                found.append(f"missing file {name}{why}")
        if provenance == "real":
            for name in ORACLE_FILES:
                if name in listed or (self.folder / name).exists():
                    found.append(f"{name}: an oracle belongs to simulated data only, but provenance is 'real'")
                    reported.add(name)
        for name, digest in sorted(listed.items()):
            path = self.folder / name
            if not path.is_file():
                found.append(f"missing file {name} (listed in {MANIFEST_FILE})")
            elif checksums and sha256_file(path) != digest:
                found.append(f"{name}: sha256 mismatch (the file changed after the dataset was written)")
        for entry in sorted(self.folder.iterdir()):
            if entry.name in reported:
                continue
            kind = "folder" if entry.is_dir() else "file"
            found.append(f"unexpected {kind} {entry.name} (not listed in {MANIFEST_FILE} files)")
        return found

    def _product_problems(self, file: str, table: Mapping[str, np.ndarray], queries: bool) -> list[str]:
        m = self.manifest
        found: list[str] = []
        expected_n = int(m["counts"]["queries" if queries else "products"])
        attrs: dict[str, dict[str, Any]] = m["attributes"]
        wanted = {"product_id", "category", *(f"attr.{a}" for a in attrs)}
        missing, extra = sorted(wanted - set(table)), sorted(set(table) - wanted)
        if missing:
            found.append(f"{file}: missing arrays {', '.join(missing)}")
        if extra:
            found.append(f"{file}: unexpected arrays {', '.join(extra)} (not in the manifest's attributes)")
        ids = table.get("product_id")
        if ids is None:
            return found
        n = len(ids)
        if ids.ndim != 1 or ids.dtype.kind != "U":
            found.append(f"{file}: product_id must be a 1-D str array, got {ids.dtype} {ids.shape}")
            return found
        if n != expected_n:
            found.append(f"{file}: {n} products, but the manifest counts {expected_n}")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = unique[counts > 1]
            found.append(
                f"{file}: {len(dup)} duplicate product ids (first: {', '.join(repr(str(d)) for d in dup[:_EXAMPLES])})"
            )

        def label(row: int) -> str:
            return f"row {row} (product {str(ids[row])!r})"

        checks: list[tuple[str, str, int, int]] = [("category", "int32", 0, len(m["categories"]))]
        for attr, spec in attrs.items():
            if spec["type"] == "categorical":
                checks.append((f"attr.{attr}", "int32", -1, len(spec["values"])))
            else:
                checks.append((f"attr.{attr}", "float64", 0, 0))
        for key, dtype, low, high in checks:
            column = table.get(key)
            if column is None:
                continue
            if column.dtype != np.dtype(dtype) or column.shape != (n,):
                found.append(f"{file}: {key} must be {dtype} of shape ({n},), got {column.dtype} {column.shape}")
                continue
            if dtype == "float64":
                continue
            bad = np.flatnonzero((column < low) | (column >= high))
            if bad.size:
                found.append(
                    f"{file}: {bad.size} {key} codes out of range {low}..{high - 1} "
                    f"(first: {_first(f'{label(r)} code {int(column[r])}' for r in bad[:_EXAMPLES])})"
                )
        images = self.folder / images_file(int(m["image_size"]), queries=queries)
        size = int(m["image_size"])
        if images.is_file() and images.stat().st_size != n * size * size * 3:
            found.append(
                f"{images.name}: {images.stat().st_size} bytes, expected N*S*S*3 = {n * size * size * 3} "
                f"(N={n} products, S={size})"
            )
        return found

    def _interaction_problems(self, table: Mapping[str, np.ndarray]) -> list[str]:
        m, file = self.manifest, INTERACTIONS_FILE
        counts = m["counts"]
        found: list[str] = []
        dtypes = {"user": "int32", "product": "int32", "timestamp": "int64", "split": "int8"}
        missing = sorted({*dtypes, "user_ids"} - set(table))
        extra = sorted(set(table) - {*dtypes, "user_ids"})
        if missing:
            return [f"{file}: missing arrays {', '.join(missing)}"]
        if extra:
            found.append(f"{file}: unexpected arrays {', '.join(extra)}")
        rows = len(table["user"])
        for key, dtype in dtypes.items():
            column = table[key]
            if column.dtype != np.dtype(dtype) or column.shape != (rows,):
                found.append(f"{file}: {key} must be {dtype} of shape ({rows},), got {column.dtype} {column.shape}")
        user_ids = table["user_ids"]
        if user_ids.ndim != 1 or user_ids.dtype.kind != "U":
            found.append(f"{file}: user_ids must be a 1-D str array, got {user_ids.dtype} {user_ids.shape}")
        if found:
            return found
        n_users, n_products = len(user_ids), int(counts["products"])
        unique, dup_counts = np.unique(user_ids, return_counts=True)
        if (dup_counts > 1).any():
            found.append(
                f"{file}: duplicate user ids (first: {', '.join(repr(str(u)) for u in unique[dup_counts > 1][:_EXAMPLES])})"
            )
        for key, count_key in (("user", "interactions"), ("user_ids", "users")):
            if len(table[key]) != int(counts[count_key]):
                found.append(f"{file}: {len(table[key])} {count_key}, but the manifest counts {counts[count_key]}")
        user, product, split, stamp = table["user"], table["product"], table["split"], table["timestamp"]
        for key, column, high, what in (
            ("user", user, n_users, "user_ids"),
            ("product", product, n_products, "products.npz rows"),
        ):
            bad = np.flatnonzero((column < 0) | (column >= high))
            if bad.size:
                found.append(
                    f"{file}: {bad.size} rows point to unknown {what} ({key} must be 0..{high - 1}; "
                    f"first: {_first(f'row {r} {key} {int(column[r])}' for r in bad[:_EXAMPLES])})"
                )
        bad = np.flatnonzero(~np.isin(split, (TRAIN, VALIDATION, TEST)))
        if bad.size:
            found.append(
                f"{file}: {bad.size} invalid split codes (0 train, 1 validation, 2 test; "
                f"first: {_first(f'row {r} split {int(split[r])}' for r in bad[:_EXAMPLES])})"
            )
        bad = np.flatnonzero(stamp < -1)
        if bad.size:
            found.append(f"{file}: {bad.size} timestamps below -1 (-1 means none; first: row {int(bad[0])})")
        valid = (user >= 0) & (user < n_users)
        for code, name in ((TRAIN, "train"), (VALIDATION, "validation"), (TEST, "test")):
            per_user = np.bincount(user[valid & (split == code)], minlength=n_users)[:n_users]
            wrong = np.flatnonzero(per_user < 1 if code == TRAIN else per_user != 1)
            if wrong.size:
                rule = "at least one" if code == TRAIN else "exactly one"
                found.append(
                    f"{file}: {wrong.size} users do not have {rule} {name} interaction "
                    f"(first: {_first(f'user {str(user_ids[u])!r} has {int(per_user[u])}' for u in wrong[:_EXAMPLES])})"
                )
            if int((split == code).sum()) != int(counts[name]):
                found.append(
                    f"{file}: {int((split == code).sum())} {name} rows, but the manifest counts {counts[name]}"
                )
        return found

    def _oracle_problems(self) -> list[str]:
        try:
            oracle = Oracle.load(self.folder, ORACLE_NAME)
        except (DataError, TypeError, KeyError, json.JSONDecodeError) as exc:
            return [f"{ORACLE_NAME}.npz/.json: not a readable oracle ({exc})"]
        users, categories = int(self.manifest["counts"]["users"]), len(self.manifest["categories"])
        shape = np.asarray(oracle.category_weights).shape
        if shape != (users, categories):
            return [f"{ORACLE_NAME}.npz: category_weights has shape {shape}, expected ({users}, {categories})"]
        return []


def _manifest_problems(m: Mapping[str, Any]) -> list[str]:
    """Problems of ``dataset.json`` itself (format, schema version, keys and their types)."""
    where = MANIFEST_FILE
    if m.get("format") != FORMAT:
        return [f"{where}: format is {m.get('format')!r}, expected {FORMAT!r}"]
    if m.get("schema_version") != SCHEMA_VERSION:
        return [
            f"{where}: schema_version {m.get('schema_version')!r} is unknown (this couturier reads {SCHEMA_VERSION})"
        ]
    found: list[str] = []
    for key, kind in (
        ("name", str),
        ("source", str),
        ("created_utc", str),
        ("importer", str),
        ("categories", list),
        ("attributes", dict),
        ("image_size", int),
        ("counts", dict),
        ("files", dict),
        ("skipped", dict),
        ("notes", list),
    ):
        if not isinstance(m.get(key), kind) or isinstance(m.get(key), bool):
            found.append(f"{where}: {key} must be a {kind.__name__}, got {m.get(key)!r:.80}")
    if m.get("provenance") not in PROVENANCES:
        found.append(f"{where}: provenance is {m.get('provenance')!r}, expected 'real' or 'simulated'")
    if found:
        return found
    categories = m["categories"]
    if not categories or not all(isinstance(c, str) and c for c in categories):
        found.append(f"{where}: categories must be a non-empty list of names")
    elif len(set(categories)) != len(categories):
        found.append(f"{where}: categories has duplicate names")
    if m["image_size"] < 1:
        found.append(f"{where}: image_size must be positive, got {m['image_size']}")
    for name, spec in m["attributes"].items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "categorical":
            values = spec.get("values")
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                found.append(f"{where}: attribute {name!r} needs a list of str values")
            elif len(set(values)) != len(values):
                found.append(f"{where}: attribute {name!r} has duplicate values")
        elif kind != "numeric":
            found.append(f"{where}: attribute {name!r} must be {{'type': 'categorical', 'values': [...]}} or numeric")
    for key in COUNT_KEYS:
        value = m["counts"].get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            found.append(f"{where}: counts.{key} must be a non-negative int, got {value!r}")
    if not found and m["counts"]["products"] < 1:
        found.append(f"{where}: a dataset needs at least one product")
    for name, digest in m["files"].items():
        if not isinstance(digest, str) or not _SHA256.match(digest):
            found.append(f"{where}: files[{name!r}] must be a sha256 hex digest, got {digest!r:.80}")
        if "/" in name or name in ("", ".", "..") or name == MANIFEST_FILE:
            found.append(f"{where}: files lists an invalid name {name!r}")
    return found


__all__ = [
    "CONTACT_SHEET",
    "FORMAT",
    "INTERACTIONS_FILE",
    "MANIFEST_FILE",
    "PRODUCTS_FILE",
    "QUERIES_FILE",
    "SCHEMA_VERSION",
    "Dataset",
    "NotADatasetError",
    "dataset_fingerprint",
    "dataset_summary",
    "images_file",
    "open_dataset",
    "read_manifest",
    "validate_dataset",
]
