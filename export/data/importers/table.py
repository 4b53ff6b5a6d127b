"""``import_table``: the tables a shop exports (CSV or Parquet) -> a dataset folder.

Products file, one row per product:

* ``product_id`` -- the shop's own id (SKU), kept as written;
* ``image`` -- a file path, relative to the products file's folder or absolute. URLs are refused
  (nothing is downloaded), and so is a relative path that leaves the products file's folder through
  ``..`` (a table from elsewhere cannot reach files around it by accident; use an absolute path to
  point outside). Symbolic links are followed;
* ``category``;
* every further column is an attribute: numeric when every filled value is a number, else
  categorical (text). Empty cells are unknown values.

Interactions file, one row per purchase (or click): ``user_id``, ``product_id`` and optionally
``timestamp`` (unix seconds, or an ISO 8601 date/time; no zone = UTC). With timestamps each user's
last purchase is test and the one before validation (DVBPR's protocol); without, a draw seeded by
``seed`` picks them. Users need 3 purchases.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from couturier.export.data.errors import DataFormatError
from couturier.export.data.importers.decode_pool import decode_images
from couturier.export.data.importers.problems import Problems
from couturier.export.data.importers.table_files import Table, read_table
from couturier.export.data.importers.writing import InteractionRows, ProductRow, write_dataset

PRODUCT_COLUMNS = ("product_id", "image", "category")
INTERACTION_COLUMNS = ("user_id", "product_id")
TIMESTAMP = "timestamp"
MIN_PURCHASES = 3
IMPORTER = "couturier data import-table"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^(data|javascript|mailto):", re.IGNORECASE)


def image_path(text: str, folder: str) -> str | None:
    """The image file a products row names (``folder``: the products file's absolute folder), or None
    when refused; :func:`image_path_problem` says why."""
    if not text or _URL.match(text):
        return None
    if os.path.isabs(text):
        return text
    joined = os.path.normpath(os.path.join(folder, text))
    return joined if joined.startswith(folder.rstrip(os.sep) + os.sep) else None


def image_path_problem(text: str) -> str:
    if not text:
        return "no image path"
    if _URL.match(text):
        return (
            "the image is a URL; nothing is downloaded: give a file path (relative to the products file, or absolute)"
        )
    return f"relative path {text!r} leaves the products file's folder; use an absolute path"


@dataclass
class _Product:
    row: int
    product_id: str
    category: str
    image: str
    attributes: dict[str, str | float | None]


def _attribute_columns(table: Table) -> tuple[dict[str, bool], list[str]]:
    """Attribute column -> numeric?, and notes about columns that are not used."""
    columns, notes = {}, []
    for name in table.frame.columns:
        if name in PRODUCT_COLUMNS:
            continue
        if not name or name.startswith("Unnamed:"):
            notes.append(f"a column without a name in {table.path.name} was ignored (an exported row index?)")
            continue
        if "/" in name:
            raise DataFormatError(f"{table.path}: attribute column {name!r} must not contain '/'; rename it")
        columns[name] = table.is_numeric(name)
    return columns, notes


def _read_products(table: Table, problems: Problems) -> tuple[list[_Product], set[str], list[str]]:
    """Rows that pass the checks (ids, category, image path), every id seen, and notes."""
    attributes, notes = _attribute_columns(table)
    values = {name: table.numbers(name) if numeric else table.text(name) for name, numeric in attributes.items()}
    ids, categories, images = table.text("product_id"), table.text("category"), table.text("image")
    folder = os.path.abspath(table.path.parent)
    first_line: dict[str, str] = {}
    products = []
    for row, (pid, category, image) in enumerate(zip(ids, categories, images)):
        where = table.where(row)
        if not pid:
            problems.add("bad_row", where, "no product_id")
            continue
        if pid in first_line:
            problems.add("duplicate_id", where, f"product_id already on {first_line[pid]}", product_id=pid)
            continue
        first_line[pid] = where
        if not category:
            problems.add("bad_row", where, "no category", product_id=pid)
            continue
        path = image_path(image, folder)
        if path is None:
            problems.add("unreadable_file" if image else "bad_row", where, image_path_problem(image), product_id=pid)
            continue
        row_attributes: dict[str, str | float | None] = {}
        for name, column in values.items():
            value = column[row]
            row_attributes[name] = (value or None) if isinstance(value, str) else float(value)
        products.append(_Product(row, pid, category, path, row_attributes))
    return products, set(first_line), notes


def _interactions(
    table: Table, known: set[str], added: set[str], problems: Problems, seed: int
) -> tuple[InteractionRows, str]:
    users, pids = table.text("user_id"), table.text("product_id")
    stamps = table.unix_seconds(TIMESTAMP) if TIMESTAMP in table.frame.columns else None
    rows = []
    for row, (user, pid) in enumerate(zip(users, pids)):
        where = table.where(row)
        if not user or not pid:
            problems.add("bad_row", where, f"no {'user_id' if not user else 'product_id'}", product_id=pid or None)
        elif stamps is not None and stamps[row] < 0:
            raw = table.frame[TIMESTAMP].iloc[row]
            problems.add(
                "bad_row", where, f"timestamp {raw!r} is neither unix seconds nor an ISO 8601 date", product_id=pid
            )
        elif pid not in known:
            problems.add("unknown_product", where, f"user {user!r}: not in the products file", product_id=pid)
        elif pid not in added:
            problems.add(
                "purchase_of_skipped_product", where, f"user {user!r}: the product was not imported", product_id=pid
            )
        else:
            rows.append(row)
    counts = Counter(users[r] for r in rows)
    first_row: dict[str, int] = {}
    for r in rows:
        first_row.setdefault(users[r], r)
    for user, n in counts.items():
        if n < MIN_PURCHASES:
            problems.add(
                "too_few_purchases",
                f"{table.where(first_row[user])} (user {user!r})",
                f"{n} usable purchase{'s' if n != 1 else ''}; the split needs {MIN_PURCHASES} (train, validation, test)",
            )
    rows = [r for r in rows if counts[users[r]] >= MIN_PURCHASES]
    split_note = (
        "split: by time per user (last purchase = test, the one before = validation)"
        if stamps is not None
        else f"split: random draw per user, seed {seed} (the interactions have no timestamp column)"
    )
    return (
        InteractionRows(
            user_ids=[users[r] for r in rows],
            product_ids=[pids[r] for r in rows],
            timestamps=[int(stamps[r]) for r in rows] if stamps is not None else None,
        ),
        split_note,
    )


def import_table(
    products: Path | str,
    interactions: Path | str | None,
    out: Path | str,
    *,
    image_size: int = 64,
    skip_invalid: bool = False,
    force: bool = False,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Import a products table and an interactions table into the dataset folder ``out``.

    ``interactions`` None imports a catalogue only. Bad rows (unreadable or corrupt images, duplicate
    ids, purchases of unknown products, users with fewer than 3 purchases, empty or invalid values)
    refuse the import with :class:`~.problems.ImportRefused` naming them, unless ``skip_invalid``.
    """
    product_table = read_table(products, PRODUCT_COLUMNS, "products")
    interaction_table = (
        read_table(interactions, INTERACTION_COLUMNS, "interactions") if interactions is not None else None
    )
    files = product_table.path.name + (f" + {interaction_table.path.name}" if interaction_table is not None else "")
    problems = Problems(files)
    rows, known, notes = _read_products(product_table, problems)

    def product_rows() -> Iterator[ProductRow]:
        images = decode_images([p.image for p in rows], image_size, workers=workers, progress=progress)
        for product, image in zip(rows, images):
            yield ProductRow(
                product_table.where(product.row), product.product_id, product.category, image, product.attributes
            )

    def interaction_rows(added: set[str]) -> InteractionRows:
        assert interaction_table is not None
        result, split_note = _interactions(interaction_table, known, added, problems, seed)
        notes.append(split_note)  # read by write_dataset when it finishes, after this call
        return result

    if interaction_table is None:
        notes.append(
            "catalogue only: no interactions file, so recommendation training needs interactions from elsewhere"
        )
    return write_dataset(
        out,
        image_size=image_size,
        force=force,
        skip_invalid=skip_invalid,
        problems=problems,
        products=product_rows(),
        interactions=interaction_rows if interaction_table is not None else None,
        name=Path(out).name,
        source=f"table {files}",
        importer=IMPORTER,
        notes=notes,
        seed=seed,
    )
