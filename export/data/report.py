"""Statistics (JSON + markdown) and a contact sheet (PNG) of a dataset folder.

Everything is labelled by provenance: a real dataset says where it came from; on the simulated world,
images and garment classes are REAL (Fashion-MNIST) while colours, shoppers and purchases are SIMULATED.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from couturier.export.data.catalogue import Catalogue
from couturier.export.data.dataset_folder import Dataset, open_dataset
from couturier.export.data.interactions import Interactions

SHEET_TITLE = "Catalogue built from Fashion-MNIST (real images) with SIMULATED colours"
#: At most this many categories (the largest) get a row on a contact sheet.
SHEET_MAX_ROWS = 40


def _counts(values: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    arr = np.asarray(values)
    counts = np.bincount(arr[arr >= 0], minlength=len(names))
    out = {name: int(counts[i]) for i, name in enumerate(names)}
    if (arr < 0).any():
        out["(unknown)"] = int((arr < 0).sum())
    return out


def catalogue_stats(catalogue: Catalogue) -> dict[str, Any]:
    """Item counts per category and per value of each categorical attribute; ranges of numeric ones."""
    numeric = {}
    for name, values in catalogue.numeric_attributes.items():
        arr = np.asarray(values, dtype=np.float64)
        known = arr[~np.isnan(arr)]
        numeric[name] = {
            "known": len(known),
            **(
                {"min": float(known.min()), "max": float(known.max()), "mean": float(known.mean())}
                if len(known)
                else {}
            ),
        }
    return {
        "n_items": len(catalogue),
        "image_size": catalogue.image_size,
        "items_per_category": _counts(catalogue.category, catalogue.category_names),
        "items_per_attribute": {
            name: _counts(codes, catalogue.attribute_values[name]) for name, codes in catalogue.attributes.items()
        },
        "numeric_attributes": numeric,
        "metadata": catalogue.metadata,
    }


def interaction_stats(interactions: Interactions) -> dict[str, Any]:
    """Users, split sizes, cold items and the purchases-per-user distribution."""
    per_user = np.array([len(t) + 2 for t in interactions.train], dtype=np.int64)
    cold = interactions.cold_items()
    quantiles = np.percentile(per_user, [0, 25, 50, 75, 100]) if len(per_user) else np.zeros(5)
    return {
        "n_users": interactions.n_users,
        "n_items": interactions.n_items,
        "n_interactions": int(per_user.sum()),
        "split_sizes": {
            "train": interactions.n_train,
            "validation": len(interactions.validation),
            "test": len(interactions.test),
        },
        "cold_items (no train interaction)": len(cold),
        "cold_item_share": round(len(cold) / max(1, interactions.n_items), 4),
        "purchases_per_user": {
            "min": int(quantiles[0]),
            "p25": float(quantiles[1]),
            "median": float(quantiles[2]),
            "p75": float(quantiles[3]),
            "max": int(quantiles[4]),
            "mean": round(float(per_user.mean()) if len(per_user) else 0.0, 3),
        },
        "metadata": interactions.metadata,
    }


def provenance_lines(dataset: Dataset) -> dict[str, str]:
    """What is real and what is simulated in ``dataset``."""
    simulation = dataset.manifest.get("simulation") or {}
    if dataset.is_simulated:
        return {
            "real": str(simulation.get("real", "see the dataset's source")),
            "simulated": str(simulation.get("simulated", "the interactions and the oracle")),
        }
    return {"real": dataset.source, "simulated": "nothing"}


def collect_stats(dataset: Dataset) -> dict[str, Any]:
    """All statistics of a dataset, labelled real vs simulated."""
    m = dataset.manifest
    return {
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "provenance": dataset.provenance,
            "folder": str(dataset.data_dir),
            "importer": m.get("importer"),
            "created_utc": m.get("created_utc"),
            "fingerprint": dataset.fingerprint,
            "skipped": m.get("skipped", {}),
            "notes": [*m.get("notes", []), *dataset.notes],
        },
        "provenance": provenance_lines(dataset),
        "profile": m.get("simulation", {}).get("profile"),
        "catalogue": catalogue_stats(dataset.catalogue),
        "heldout": catalogue_stats(dataset.heldout),
        "interactions": interaction_stats(dataset.interactions) if dataset.interactions is not None else None,
    }


def _markdown(stats: dict[str, Any]) -> str:
    d = stats["dataset"]
    simulated = d["provenance"] == "simulated"
    lines = [
        f"# Couturier data statistics: {d['name']}",
        "",
        f"- **Provenance**: {d['provenance']} ({d['source']})",
        f"- **Real**: {stats['provenance']['real']}",
        f"- **Simulated**: {stats['provenance']['simulated']}",
        f"- **Folder**: {d['folder']} (fingerprint {d['fingerprint'][:12]})",
        "",
    ]
    for section, title in (("catalogue", "Catalogue"), ("heldout", "Held-out queries")):
        cat = stats[section]
        lines += [f"## {title}", "", f"{cat['n_items']} items, {cat['image_size']}x{cat['image_size']} RGB", ""]
        tables = {"category": cat["items_per_category"], **cat["items_per_attribute"]}
        for name, counts in tables.items():
            label = " (SIMULATED)" if simulated and name == "colour" else ""
            lines += [f"### items per {name}{label}", "", f"| {name} | items |", "|---|---:|"]
            lines += [f"| {value} | {count} |" for value, count in counts.items()]
            lines.append("")
        for name, summary in cat["numeric_attributes"].items():
            lines.append(f"- {name}: {summary}")
    inter = stats["interactions"]
    if inter is None:
        lines += [
            "## Interactions",
            "",
            "none: a catalogue-only dataset (recommendation training needs interactions)",
            "",
        ]
        return "\n".join(lines)
    ppu = inter["purchases_per_user"]
    lines += [
        f"## Interactions ({'SIMULATED shoppers' if simulated else 'real'})",
        "",
        f"- users: {inter['n_users']}, items: {inter['n_items']}, purchases: {inter['n_interactions']}",
        f"- split sizes: train {inter['split_sizes']['train']}, validation {inter['split_sizes']['validation']}, "
        f"test {inter['split_sizes']['test']}",
        f"- cold items (no train interaction): {inter['cold_items (no train interaction)']} "
        f"({100 * inter['cold_item_share']:.1f} %)",
        f"- purchases per user: min {ppu['min']}, p25 {ppu['p25']}, median {ppu['median']}, p75 {ppu['p75']}, "
        f"max {ppu['max']}, mean {ppu['mean']}",
        "",
    ]
    return "\n".join(lines)


def write_stats(source: Dataset | Path | str, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``data_stats.json`` and ``data_stats.md`` into ``out_dir``; returns both paths."""
    dataset = source if isinstance(source, Dataset) else open_dataset(source)
    stats = collect_stats(dataset)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / "data_stats.json", folder / "data_stats.md"
    js.write_text(json.dumps(stats, indent=2, sort_keys=False, default=str) + "\n")
    md.write_text(_markdown(stats))
    return js, md


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _sheet_picks(catalogue: Catalogue, category: int, per_row: int) -> list[int]:
    """Up to ``per_row`` items of a category, one per colour first (in catalogue order)."""
    rows = np.flatnonzero(catalogue.category == category)
    picks: list[int] = []
    seen: set[int] = set()
    for i in rows:
        colour = int(catalogue.colour[i])
        if colour >= 0 and colour in seen:
            continue
        seen.add(colour)
        picks.append(int(i))
        if len(picks) == per_row:
            return picks
    extra = [int(i) for i in rows if int(i) not in picks]
    return picks + extra[: per_row - len(picks)]


def write_contact_sheet(
    catalogue: Catalogue, path: Path | str, *, per_row: int = 8, cell: int = 96, title: str | None = None
) -> Path:
    """PNG grid: one row per category (the largest :data:`SHEET_MAX_ROWS`), ``per_row`` items
    (distinct colours first), labelled. Reads only the rows it shows (``images`` may be a memmap)."""
    if title is None:
        title = SHEET_TITLE if catalogue.metadata.get("simulated colours") == "yes" else "Catalogue"
    label_w, title_h, caption_h, pad = 110, 36, 16, 6
    sizes = np.bincount(np.asarray(catalogue.category), minlength=len(catalogue.category_names))
    shown = sorted(np.argsort(-sizes, kind="stable")[:SHEET_MAX_ROWS].tolist())
    n_rows = len(shown)
    width = label_w + per_row * (cell + pad) + pad
    height = title_h + n_rows * (cell + caption_h + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 10), title, fill="black", font=_font(15))
    small = _font(11)
    for r, category in enumerate(shown):
        y = title_h + r * (cell + caption_h + pad)
        draw.text((pad, y + cell // 2 - 6), catalogue.category_names[category][:16], fill="black", font=_font(13))
        for c, i in enumerate(_sheet_picks(catalogue, category, per_row)):
            x = label_w + c * (cell + pad)
            tile = Image.fromarray(np.asarray(catalogue.images[i])).resize((cell, cell), Image.Resampling.BICUBIC)
            sheet.paste(tile, (x, y))
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(220, 220, 220))
            colour = int(catalogue.colour[i])
            caption = catalogue.colour_names[colour] if colour >= 0 else str(catalogue.product_ids[i])[-12:]
            draw.text((x + 2, y + cell + 1), caption, fill=(60, 60, 60), font=small)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
