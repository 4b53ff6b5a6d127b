"""``import_dvbpr``: a DVBPR Amazon/Tradesy ``.npy`` file -> a dataset folder.

The file is a pickled 6-element object array written by Python 2 (read with
:mod:`.safe_pickle`, ``encoding='bytes'``)::

    [user_train, user_validation, user_test, Item, usernum, itemnum]

``user_train[u]`` (and the validation/test lists) are lists of purchases, dicts whose ``productid``
is an item index in ``0..itemnum-1``; ``Item[i]`` is a dict with the JPEG bytes under ``imgs``, the
category under ``c`` (an int, or a one-hot vector as fed to the conditional GAN) and the Amazon id
under ``asin``. Keys are bytes (Python 2) or str (a file re-saved by Python 3); containers are dicts
keyed by index or sequences. The file does not name its categories (DVBPR's paper: tops, bottoms and
shoes for men and women), so they are named by ``category_names`` or ``category-<c>``.

Kept as the file has it: ``asin`` as the product id, the reviewer id as the user id (when each user has
one, distinct from the others) and the file's own train/validation/test split.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from couturier.export.data.errors import DataFormatError
from couturier.export.data.importers.decode_pool import decode_images
from couturier.export.data.importers.problems import Problems
from couturier.export.data.importers.safe_pickle import load_object_npy
from couturier.export.data.importers.writing import InteractionRows, ProductRow, write_dataset

FIELDS = ("user_train", "user_validation", "user_test", "Item", "usernum", "itemnum")
SPLITS = ("user_train", "user_validation", "user_test")  # split codes 0, 1, 2
IMPORTER = "couturier data import-dvbpr"
_MISSING = object()


def _get(entry: Any, key: str) -> Any:
    """``entry[b'key']`` or ``entry['key']``; :data:`_MISSING` when absent or not a dict."""
    if isinstance(entry, Mapping):
        for k in (key.encode(), key):
            if k in entry:
                return entry[k]
    return _MISSING


def _text(value: Any) -> str | None:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8").strip() or None
        except UnicodeDecodeError:
            return None
    if isinstance(value, (str, np.str_)):
        return str(value).strip() or None
    return None


def _rows(container: Any, n: int, name: str) -> list[Any]:
    """``container[0..n-1]`` for a dict keyed by index or a sequence (a structural error otherwise)."""
    if isinstance(container, Mapping):
        keys = {int(k) for k in container if isinstance(k, (int, np.integer))}
        missing = [i for i in range(n) if i not in keys]
        if missing:
            raise DataFormatError(f"{name} has no entry for index {missing[0]} ({len(missing)} of {n} missing)")
        return [container[i] for i in range(n)]
    if isinstance(container, (Sequence, np.ndarray)) and not isinstance(container, (str, bytes)):
        if len(container) < n:
            raise DataFormatError(f"{name} has {len(container)} entries, expected {n}")
        return [container[i] for i in range(n)]
    raise DataFormatError(f"{name} must be a dict or a list, got {type(container).__name__}")


def _category(value: Any) -> tuple[int, int] | str:
    """(category index, one-hot width or 0), or why the value is not a category."""
    if value is _MISSING:
        return "no category (key 'c')"
    arr = np.asarray(value)
    if arr.ndim == 0:
        if arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and float(arr).is_integer()):
            index = int(arr)
            return (index, 0) if index >= 0 else f"negative category {index}"
        return f"category {value!r} is not an integer"
    if arr.ndim == 1 and arr.size > 0 and np.issubdtype(arr.dtype, np.number):
        return int(np.argmax(arr)), int(arr.size)
    return f"category {value!r} is neither an int nor a one-hot vector"


@dataclass
class _Items:
    product_ids: list[str | None]  # None: the item has a problem
    category: list[int]
    images: list[bytes]
    n_categories: int
    notes: list[str] = field(default_factory=list)


def _read_items(rows: list[Any], problems: Problems) -> _Items:
    asins = [_text(_get(entry, "asin")) for entry in rows]
    has_asin = any(a is not None for a in asins)
    notes = [] if has_asin else ["the file has no 'asin' keys: product ids are item-<index> (the item's position)"]
    items = _Items([], [], [], 1, notes)
    first_row: dict[str, int] = {}
    for i, entry in enumerate(rows):
        where = f"Item[{i}]"
        pid = asins[i] if has_asin else f"item-{i}"
        category = _category(_get(entry, "c"))
        image = _get(entry, "imgs")
        problem: tuple[str, str] | None = None
        if not isinstance(entry, Mapping):
            problem = ("bad_row", f"an item must be a dict, got {type(entry).__name__}")
        elif pid is None:
            problem = ("bad_row", "no usable 'asin' (other items have one)")
        elif pid in first_row:
            problem = ("duplicate_id", f"asin already used by Item[{first_row[pid]}]")
        elif isinstance(category, str):
            problem = ("bad_row", category)
        elif not isinstance(image, (bytes, bytearray, np.bytes_)):
            got = "nothing" if image is _MISSING else type(image).__name__
            problem = ("corrupt_image", f"no image bytes under 'imgs' (got {got})")
        if problem is not None:
            problems.add(problem[0], where, problem[1], product_id=pid)
            items.product_ids.append(None)
            items.category.append(-1)
            items.images.append(b"")
            continue
        assert pid is not None and not isinstance(category, str)
        first_row[pid] = i
        items.product_ids.append(pid)
        items.category.append(category[0])
        items.images.append(bytes(image))
        items.n_categories = max(items.n_categories, category[0] + 1, category[1])
    return items


@dataclass
class _Purchases:
    user: list[int] = field(default_factory=list)
    item: list[int] = field(default_factory=list)
    split: list[int] = field(default_factory=list)
    reviewers: list[set[str]] = field(default_factory=list)
    extra_held_out: int = 0  # validation/test entries after a user's first (DVBPR evaluates the first)


def _read_purchases(parts: Sequence[Any], usernum: int, itemnum: int, problems: Problems) -> _Purchases:
    purchases = _Purchases(reviewers=[set() for _ in range(usernum)])
    for code, name in enumerate(SPLITS):
        for u, entries in enumerate(_rows(parts[code], usernum, name)):
            if not isinstance(entries, (Sequence, np.ndarray)) or isinstance(entries, (str, bytes)):
                problems.add("bad_row", f"{name}[{u}]", f"must be a list of purchases, got {type(entries).__name__}")
                continue
            held_out = False
            for k, entry in enumerate(entries):
                if held_out:
                    purchases.extra_held_out += 1
                    continue
                where, value = f"{name}[{u}][{k}]", _get(entry, "productid")
                try:
                    item = int(value)
                except (TypeError, ValueError):
                    problems.add(
                        "bad_row",
                        where,
                        f"productid {'missing' if value is _MISSING else repr(value)} is not an integer",
                    )
                    continue
                if not 0 <= item < itemnum:
                    problems.add("unknown_product", where, f"productid {item} is not an item (0..{itemnum - 1})")
                    continue
                reviewer = _text(_get(entry, "reviewerID"))
                if reviewer is not None:
                    purchases.reviewers[u].add(reviewer)
                purchases.user.append(u)
                purchases.item.append(item)
                purchases.split.append(code)
                held_out = code > 0
    return purchases


def _user_ids(reviewers: list[set[str]]) -> tuple[list[str], str]:
    """Reviewer ids when every user has exactly one and they are distinct, else ``user-<index>``."""
    single = [next(iter(r)) for r in reviewers if len(r) == 1]
    if len(single) == len(reviewers) and len(set(single)) == len(single):
        return single, "user ids are the purchases' reviewerID"
    return [f"user-{u}" for u in range(len(reviewers))], "user ids are user-<index> (the user's position in the file)"


def _category_names(names: Sequence[str] | None, n_categories: int) -> tuple[list[str], str]:
    if names is None:
        return [f"category-{c}" for c in range(n_categories)], (
            "the file does not name its categories: they are category-<c> (name them with --categories)"
        )
    cleaned = [name.strip() for name in names]
    if any(not name for name in cleaned) or len(set(cleaned)) != len(cleaned):
        raise DataFormatError(f"category names must be distinct and non-empty, got {list(names)}")
    if len(cleaned) < n_categories:
        raise DataFormatError(
            f"the file has {n_categories} categories (0..{n_categories - 1}) but {len(cleaned)} names were given "
            f"({', '.join(cleaned)}); give one name per category, in index order"
        )
    return cleaned, "category names given by --categories, in the file's index order"


def _keep_users_with_full_split(
    purchases: _Purchases, kept: np.ndarray, user_ids: list[str], problems: Problems
) -> np.ndarray:
    """Rows of users that still have a train, a validation and a test purchase; the others are problems."""
    users, splits = np.asarray(purchases.user)[kept], np.asarray(purchases.split)[kept]
    counts = np.zeros((len(user_ids), 3), dtype=np.int64)
    np.add.at(counts, (users, splits), 1)
    short = np.flatnonzero(counts.min(axis=1) == 0)
    for u in short:
        train, validation, test = counts[u]
        problems.add(
            "too_few_purchases",
            f"user {u} ({user_ids[u]!r})",
            f"{train} train, {validation} validation, {test} test purchases; the split needs one of each",
        )
    return kept & ~np.isin(np.asarray(purchases.user, dtype=np.int64), short)


def import_dvbpr(
    path: Path | str,
    out: Path | str,
    *,
    image_size: int = 64,
    category_names: Sequence[str] | None = None,
    skip_invalid: bool = False,
    force: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Import a DVBPR ``.npy`` into the dataset folder ``out`` (see the module docstring).

    Bad rows (corrupt images, unknown or skipped products, duplicate asins, users without a purchase
    in each split) refuse the import with :class:`~.problems.ImportRefused`, unless ``skip_invalid``.
    """
    file = Path(path)
    parts = load_object_npy(file)
    if isinstance(parts, (list, tuple)) or (isinstance(parts, np.ndarray) and parts.ndim == 1):
        parts, got = list(parts), f"{len(parts)} elements"
    else:
        got = f"a {type(parts).__name__} of shape {getattr(parts, 'shape', '?')}"
    if not isinstance(parts, list) or len(parts) != len(FIELDS):
        raise DataFormatError(f"{file}: expected a 6-element array [{', '.join(FIELDS)}], got {got}")
    try:
        usernum, itemnum = int(parts[4]), int(parts[5])
    except (TypeError, ValueError):
        raise DataFormatError(f"{file}: usernum and itemnum must be integers, got {parts[4]!r}, {parts[5]!r}") from None
    if usernum < 1 or itemnum < 1:
        raise DataFormatError(f"{file}: usernum ({usernum}) and itemnum ({itemnum}) must be positive")

    problems = Problems(str(file))
    try:
        items = _read_items(_rows(parts[3], itemnum, "Item"), problems)
        purchases = _read_purchases(parts, usernum, itemnum, problems)
    except DataFormatError as exc:
        raise DataFormatError(f"{file}: {exc}") from None
    names, names_note = _category_names(category_names, items.n_categories)
    user_ids, users_note = _user_ids(purchases.reviewers)
    decodable = [i for i, pid in enumerate(items.product_ids) if pid is not None]

    def products() -> Iterator[ProductRow]:
        images = decode_images([items.images[i] for i in decodable], image_size, workers=workers, progress=progress)
        for i, image in zip(decodable, images):
            pid = str(items.product_ids[i])
            yield ProductRow(f"Item[{i}]", pid, names[items.category[i]], image)

    def interactions(added: set[str]) -> InteractionRows:
        item = np.asarray(purchases.item, dtype=np.int64)
        kept = np.array([pid is not None and pid in added for pid in items.product_ids], dtype=bool)[item]
        for row in np.flatnonzero(~kept):
            u, i = purchases.user[row], purchases.item[row]
            problems.add(
                "purchase_of_skipped_product",
                f"{SPLITS[purchases.split[row]]}[{u}] (user {user_ids[u]!r})",
                f"Item[{i}] was not imported",
            )
        rows = np.flatnonzero(_keep_users_with_full_split(purchases, kept, user_ids, problems))
        return InteractionRows(
            user_ids=[user_ids[purchases.user[r]] for r in rows],
            product_ids=[str(items.product_ids[purchases.item[r]]) for r in rows],
            split=np.asarray(purchases.split, dtype=np.int8)[rows],
        )

    return write_dataset(
        out,
        image_size=image_size,
        force=force,
        skip_invalid=skip_invalid,
        problems=problems,
        products=products(),
        interactions=interactions,
        name=Path(out).name,
        source=f"DVBPR file {file.name}",
        importer=IMPORTER,
        categories=names,
        notes=[
            *items.notes,
            names_note,
            users_note,
            "split: the file's own train/validation/test lists",
            *(
                [
                    f"{purchases.extra_held_out} validation/test entries after a user's first were left out (DVBPR evaluates the first)"
                ]
                if purchases.extra_held_out
                else []
            ),
        ],
    )
