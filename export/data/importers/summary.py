"""What an import wrote, in a few lines for the command line (read back from the folder's manifest)."""

from __future__ import annotations

import json
from pathlib import Path

from couturier.export.data.dataset_folder import CONTACT_SHEET, MANIFEST_FILE


def import_summary(folder: Path, seconds: float | None = None) -> list[str]:
    """Lines: what was imported, what was skipped (and where that is recorded), notes, the folder."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    counts = manifest["counts"]
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines = [
        f"imported {counts['products']:,} products in {len(manifest['categories'])} categories "
        f"({', '.join(manifest['categories'][:8])}{', ...' if len(manifest['categories']) > 8 else ''}) "
        f"from {manifest['source']}{took}"
    ]
    if counts["interactions"]:
        lines.append(
            f"  {counts['users']:,} users, {counts['interactions']:,} interactions: {counts['train']:,} train, "
            f"{counts['validation']:,} validation, {counts['test']:,} test"
        )
    else:
        lines.append("  no interactions: recommendation training needs interactions from elsewhere")
    if manifest["attributes"]:
        lines.append(
            "  attributes: " + ", ".join(f"{name} ({spec['type']})" for name, spec in manifest["attributes"].items())
        )
    skipped = manifest.get("skipped") or {}
    if skipped:
        lines.append(
            "  skipped (recorded under 'skipped' in dataset.json): "
            + ", ".join(f"{entry['count']} {kind}" for kind, entry in skipped.items())
        )
        for kind, entry in skipped.items():
            lines.extend(f"    {kind}: {example}" for example in entry["examples"][:2])
    else:
        lines.append("  skipped: nothing")
    lines.extend(f"  note: {note}" for note in manifest.get("notes", []))
    sheet = folder / CONTACT_SHEET
    lines.append(f"dataset folder: {folder}" + (f" (contact sheet {sheet})" if sheet.exists() else ""))
    return lines
