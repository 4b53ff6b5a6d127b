"""Bad rows met by an importer: refuse with a message naming them, or skip them and record what was skipped.

Both modes see the same problems: a refusal lists exactly what ``--skip-invalid`` would leave out, and
the manifest's ``skipped`` record (kind -> count and first examples) is the refusal's content.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from couturier.export.data.errors import DataError

#: Kinds of bad rows, in report order, with how a count of them reads.
KINDS: dict[str, str] = {
    "bad_row": "rows with a missing or invalid value",
    "duplicate_id": "duplicate product ids (the first row is kept)",
    "unreadable_file": "missing or unreadable image files",
    "corrupt_image": "corrupt, truncated or unsupported images",
    "unknown_product": "purchases of unknown products",
    "purchase_of_skipped_product": "purchases of products that have a problem above",
    "too_few_purchases": "users with fewer than 3 purchases (train, validation and test need one each)",
}
EXAMPLES = 5
SKIP_FLAG = "--skip-invalid"


class ImportRefused(DataError):
    """An import found bad rows and wrote nothing; the message names them and counts each kind."""


@dataclass(frozen=True)
class Problem:
    """One bad row: where it is (file and line, or index), which product, and what is wrong."""

    kind: str
    where: str
    detail: str
    product_id: str | None = None

    def describe(self) -> str:
        product = f", product {self.product_id!r}" if self.product_id is not None else ""
        return f"{self.where}{product}: {self.detail}"


class Problems:
    """Counts of every kind, and the first :data:`EXAMPLES` rows of each (memory stays bounded)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._counts: Counter[str] = Counter()
        self._examples: dict[str, list[Problem]] = {}

    def add(self, kind: str, where: str, detail: str, *, product_id: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self._counts[kind] += 1
        examples = self._examples.setdefault(kind, [])
        if len(examples) < EXAMPLES:
            examples.append(Problem(kind, where, detail, product_id))

    def __len__(self) -> int:
        return sum(self._counts.values())

    def __bool__(self) -> bool:
        return len(self) > 0

    def counts(self) -> dict[str, int]:
        return {kind: self._counts[kind] for kind in KINDS if self._counts[kind]}

    def examples(self, kind: str) -> list[Problem]:
        return list(self._examples.get(kind, []))

    def manifest_record(self) -> dict[str, dict[str, Any]]:
        """The manifest's ``skipped``: kind -> {"count", "examples"} (first rows, described)."""
        return {
            kind: {"count": count, "examples": [p.describe() for p in self._examples[kind]]}
            for kind, count in self.counts().items()
        }

    def summary(self) -> str:
        """One line, e.g. ``1 corrupt_image, 2 unknown_product`` (or ``nothing``)."""
        return ", ".join(f"{count} {kind}" for kind, count in self.counts().items()) or "nothing"

    def refusal(self) -> ImportRefused:
        lines = [f"refused to import {self.source}: {len(self)} problems; nothing was written."]
        for kind, count in self.counts().items():
            lines.append(f"  {count} {KINDS[kind]} [{kind}], first:")
            lines.extend(f"    {p.describe()}" for p in self._examples[kind][:3])
        lines.append(
            f"Fix these rows, or pass {SKIP_FLAG} (skip_invalid=True) to import the rest; "
            "what is skipped is then recorded in the manifest."
        )
        return ImportRefused("\n".join(lines))
