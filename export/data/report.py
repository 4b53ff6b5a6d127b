"""Statistics (JSON + markdown) and a contact sheet (PNG) of a prepared data set.

Everything is labelled by provenance: images and garment classes are REAL (Fashion-MNIST);
colours, shoppers and purchases are SIMULATED.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from couturier.export.data.catalogue import Catalogue
from couturier.export.data.dataset import PreparedData, load_prepared
from couturier.export.data.fashion_mnist import FM_CLASSES
from couturier.export.data.interactions import Interactions

SHEET_TITLE = "Catalogue built from Fashion-MNIST (real images) with SIMULATED colours"


def _counts(values: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(np.asarray(values)[np.asarray(values) >= 0], minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def catalogue_stats(catalogue: Catalogue) -> dict[str, Any]:
    """Item counts per category, colour and Fashion-MNIST class."""
    return {
        "n_items": len(catalogue),
        "image_size": catalogue.image_size,
        "items_per_category (real garment types)": _counts(catalogue.category, catalogue.category_names),
        "items_per_fm_class (real)": _counts(catalogue.fm_class, FM_CLASSES),
        "items_per_colour (SIMULATED)": _counts(catalogue.colour, catalogue.colour_names),
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


def collect_stats(prepared: PreparedData) -> dict[str, Any]:
    """All statistics of a prepared data set, labelled real vs simulated."""
    return {
        "provenance": {
            "real": "images and garment classes: Fashion-MNIST (Debian package dataset-fashion-mnist)",
            "simulated": "garment colours, shoppers, purchases, planted tastes (oracle)",
        },
        "profile": prepared.manifest.get("profile", {}),
        "catalogue": catalogue_stats(prepared.catalogue),
        "heldout_catalogue (Fashion-MNIST test split)": catalogue_stats(prepared.heldout),
        "interactions (SIMULATED shoppers)": interaction_stats(prepared.interactions),
    }


def _markdown(stats: dict[str, Any]) -> str:
    lines = [
        "# Couturier data statistics",
        "",
        f"- **Real**: {stats['provenance']['real']}",
        f"- **Simulated**: {stats['provenance']['simulated']}",
        "",
    ]
    for section in ("catalogue", "heldout_catalogue (Fashion-MNIST test split)"):
        cat = stats[section]
        lines += [f"## {section}", "", f"{cat['n_items']} items, {cat['image_size']}x{cat['image_size']} RGB", ""]
        for key in (
            "items_per_category (real garment types)",
            "items_per_fm_class (real)",
            "items_per_colour (SIMULATED)",
        ):
            lines += [f"### {key}", "", "| name | items |", "|---|---:|"]
            lines += [f"| {name} | {count} |" for name, count in cat[key].items()]
            lines.append("")
    inter = stats["interactions (SIMULATED shoppers)"]
    ppu = inter["purchases_per_user"]
    lines += [
        "## Interactions (SIMULATED shoppers)",
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


def write_stats(source: PreparedData | Path | str, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``data_stats.json`` and ``data_stats.md`` into ``out_dir``; returns both paths."""
    prepared = source if isinstance(source, PreparedData) else load_prepared(source)
    stats = collect_stats(prepared)
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
    """PNG grid: one row per category, ``per_row`` items (distinct colours), labelled."""
    if title is None:
        title = SHEET_TITLE if catalogue.metadata.get("simulated colours") == "yes" else "Catalogue"
    label_w, title_h, caption_h, pad = 110, 36, 16, 6
    n_rows = len(catalogue.category_names)
    width = label_w + per_row * (cell + pad) + pad
    height = title_h + n_rows * (cell + caption_h + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 10), title, fill="black", font=_font(15))
    small = _font(11)
    for r, name in enumerate(catalogue.category_names):
        y = title_h + r * (cell + caption_h + pad)
        draw.text((pad, y + cell // 2 - 6), name, fill="black", font=_font(13))
        for c, i in enumerate(_sheet_picks(catalogue, r, per_row)):
            x = label_w + c * (cell + pad)
            tile = Image.fromarray(catalogue.images[i]).resize((cell, cell), Image.Resampling.BICUBIC)
            sheet.paste(tile, (x, y))
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(220, 220, 220))
            colour = int(catalogue.colour[i])
            caption = catalogue.colour_names[colour] if colour >= 0 else str(catalogue.product_ids[i])[-12:]
            draw.text((x + 2, y + cell + 1), caption, fill=(60, 60, 60), font=small)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
