"""The part every importer shares: stream products into a :class:`DatasetWriter`, then refuse or finish.

Images are decoded while the products stream in; their failures join the importer's other
:class:`~.problems.Problems`. Before anything is finished the problems decide: none, or
``skip_invalid`` -> the dataset is written with a ``skipped`` record; otherwise the writer is aborted
(no ``out``, no temp folder) and :class:`~.problems.ImportRefused` names the bad rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from couturier.export.data.dataset_writer import DatasetWriter
from couturier.export.data.errors import DataError
from couturier.export.data.importers.images import ImageDecodeError
from couturier.export.data.importers.problems import Problems


@dataclass(frozen=True)
class ProductRow:
    """One product as an importer read it; ``image`` is the decoded image or why it failed."""

    where: str  # e.g. "products.csv line 4" or "Item[3]"
    product_id: str
    category: str
    image: np.ndarray | ImageDecodeError
    attributes: Mapping[str, str | float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class InteractionRows:
    """Purchases to store (already cleaned of bad rows); ``split`` None -> split by the writer."""

    user_ids: Sequence[str]
    product_ids: Sequence[str]
    timestamps: Sequence[int] | None = None
    split: np.ndarray | None = None


def write_dataset(
    out: Path | str,
    *,
    image_size: int,
    force: bool,
    skip_invalid: bool,
    problems: Problems,
    products: Iterable[ProductRow],
    interactions: Callable[[set[str]], InteractionRows] | None,
    name: str,
    source: str,
    importer: str,
    notes: Sequence[str] = (),
    seed: int = 0,
    categories: Sequence[str] | None = None,
) -> Path:
    """Write the dataset folder ``out``; ``interactions`` gets the ids of the products actually added.

    ``categories``: the category names in code order (default: the writer sorts the names it sees).
    """
    with DatasetWriter(Path(out), image_size=image_size, force=force, categories=categories) as writer:
        added: set[str] = set()
        for row in products:
            if isinstance(row.image, ImageDecodeError):
                problems.add(row.image.kind, row.where, row.image.reason, product_id=row.product_id)
                continue
            writer.add_product(row.product_id, row.category, row.image, row.attributes)
            added.add(row.product_id)
        rows = interactions(added) if interactions is not None else None
        if problems and not skip_invalid:
            raise problems.refusal()
        if not added:
            raise DataError(f"{source}: no products left to import ({problems.summary()} skipped)")
        if rows is not None:
            if not rows.user_ids:
                raise DataError(f"{source}: no purchases left to import ({problems.summary()} skipped)")
            writer.set_interactions(rows.user_ids, rows.product_ids, rows.timestamps, split=rows.split, seed=seed)
        return writer.finish(
            name=name,
            source=source,
            provenance="real",
            importer=importer,
            skipped=problems.manifest_record(),
            notes=list(notes),
        )
