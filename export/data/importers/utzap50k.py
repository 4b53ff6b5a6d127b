"""``import_utzap50k``: UT-Zap50K shoe photos -> a catalogue-only dataset folder.

Layout: ``<root>/<Category>/<SubCategory>/<Brand>/<name>.jpg`` with Category one of Boots, Sandals,
Shoes, Slippers. Each product's id is ``utzap:`` plus its path relative to the root; SubCategory and
Brand become categorical attributes. UT-Zap50K has no purchases: recommendation training on it needs
interactions from elsewhere (e.g. a shop's purchase log through ``couturier data import-table``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from couturier.export.data.errors import DataFormatError, DatasetMissingError
from couturier.export.data.importers.decode_pool import decode_images
from couturier.export.data.importers.problems import Problems
from couturier.export.data.importers.writing import ProductRow, write_dataset

CATEGORIES: tuple[str, ...] = ("Boots", "Sandals", "Shoes", "Slippers")
SUFFIXES = {".jpg", ".jpeg"}
IMPORTER = "couturier data import-utzap50k"
CATALOGUE_ONLY_NOTE = (
    "catalogue only: UT-Zap50K has no purchases, so recommendation training needs interactions from "
    "elsewhere (e.g. a purchase log imported with `couturier data import-table`)"
)


def scan_utzap50k(root: Path) -> list[Path]:
    """The image files under ``root`` in sorted path order; DataFormatError for another layout."""
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    if not any(name in CATEGORIES for name in entries):
        nested = [
            name for name in entries if (root / name).is_dir() and any((root / name / c).is_dir() for c in CATEGORIES)
        ]
        hint = f"; did you mean {root / nested[0]}?" if nested else ""
        raise DataFormatError(
            f"{root} does not look like UT-Zap50K: expected folders {', '.join(CATEGORIES)} "
            f"(<Category>/<SubCategory>/<Brand>/<name>.jpg), found {entries[:10]}{hint}"
        )
    unknown = [name for name in entries if name not in CATEGORIES and (root / name).is_dir()]
    if unknown:
        raise DataFormatError(f"{root}: unexpected folder {unknown[0]!r}; categories must be {', '.join(CATEGORIES)}")
    files = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in SUFFIXES and not path.name.startswith(".") and not path.is_dir():
            rel = path.relative_to(root)
            if len(rel.parts) != 4:
                raise DataFormatError(
                    f"{root}: image {rel.as_posix()} is not at <Category>/<SubCategory>/<Brand>/<name>.jpg"
                )
            files.append(path)
    if not files:
        raise DataFormatError(f"{root}: no .jpg images under {', '.join(CATEGORIES)}")
    return files


def import_utzap50k(
    root: Path | str,
    out: Path | str,
    *,
    image_size: int = 64,
    limit: int | None = None,
    skip_invalid: bool = False,
    force: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Import the UT-Zap50K images under ``root`` (``limit``: the first N in sorted path order) into ``out``.

    Corrupt or unreadable images refuse the import (:class:`~.problems.ImportRefused`) unless ``skip_invalid``.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetMissingError(f"UT-Zap50K folder {folder} does not exist")
    if limit is not None and limit < 1:
        raise DataFormatError(f"--limit must be at least 1, got {limit}")
    files = scan_utzap50k(folder)[:limit]
    problems = Problems(str(folder))

    def products() -> Iterator[ProductRow]:
        images = decode_images([str(f) for f in files], image_size, workers=workers, progress=progress)
        for path, image in zip(files, images):
            rel = path.relative_to(folder).as_posix()
            category, subcategory, brand, _ = rel.split("/")
            yield ProductRow(str(path), f"utzap:{rel}", category, image, {"subcategory": subcategory, "brand": brand})

    return write_dataset(
        out,
        image_size=image_size,
        force=force,
        skip_invalid=skip_invalid,
        problems=problems,
        products=products(),
        interactions=None,
        name=Path(out).name,
        source=f"UT-Zap50K folder {folder.name}",
        importer=IMPORTER,
        categories=CATEGORIES,
        notes=[
            CATALOGUE_ONLY_NOTE,
            f"the first {len(files)} images in sorted path order (--limit)" if limit is not None else "all images",
        ],
    )
