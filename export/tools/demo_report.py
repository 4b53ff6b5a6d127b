"""Render the main job's results (``couturier demo``) as one self-contained HTML page, markdown and JSON.

Pure functions: they take the :class:`~couturier.export.tools.demo_results.DemoResults` that
:mod:`couturier.export.tools.demo` collects and return text; nothing here talks to a service. Images
are PNG ``bytes`` in the results; the HTML embeds them as ``data:image/png;base64`` URIs (no file
next to the page is needed), the JSON drops them.

Every section may be missing (``None`` or empty); ``DemoResults.errors`` maps a section id of
:data:`SECTIONS` to the reason it has no (or only part of its) results.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from couturier.export.tools.demo_results import (
    AlterFrame,
    DemoResults,
    DesignRun,
    IndexSide,
    Item,
    ModelsSummary,
)

#: Section ids in page order with their headings.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("indexing", "Indexing the catalogue"),
    ("recommend", "Recommend"),
    ("design", "DesignAndShop"),
    ("alter", "Alter (personalised alteration)"),
    ("seller", "SellerFeedback (GIGS)"),
    ("multimodal", "MultimodalShop"),
    ("search", "SearchByImage"),
    ("services", "Service health and diagnostics"),
)

SIMULATED_NOTICE = (
    "Shoppers, their purchases and the garment colours are SIMULATED; the garment shapes are real "
    "Fashion-MNIST images (28 x 28 grayscale, tinted and rendered as product photos). Preference scores "
    "come from models trained on these simulated shoppers, so they show the system working, not the "
    "taste of real people."
)


def data_notice(r: DemoResults) -> str:
    """What the data is: the simulated world's notice, or the real dataset's name and source."""
    if r.data is None or r.data.provenance == "simulated":
        return SIMULATED_NOTICE
    return (
        f"REAL data: the dataset {r.data.name!r} ({r.data.source}). Products, images and interactions are the "
        "dataset's own; there is no planted taste to check designs against, so preference figures are the "
        "learned model's."
    )


GAN_NOTE = (
    "Generated images come from the conditional GAN of the training profile; the demo profile trains it for a few "
    "minutes on a CPU, so its images are rough. What to look at is the preference gain and the real products found."
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px} h3{margin-bottom:6px}
.notice{background:#fff4d6;border:1px solid #e6c65c;padding:10px 14px;border-radius:6px;font-weight:600}
.what{color:#444;margin-top:0}
.error{background:#fde2e2;border:1px solid #d77;padding:8px 12px;border-radius:6px;white-space:pre-wrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(112px,1fr));gap:8px;margin:6px 0 14px}
.tile{border:1px solid #ddd;border-radius:6px;padding:4px;text-align:center;font-size:11px;line-height:1.3;background:#fafafa}
.tile img{width:96px;height:96px;image-rendering:pixelated;display:block;margin:0 auto 3px}
.tile.hl{border-color:#2a7;background:#effaf3}
.tile .id{color:#777;font-size:10px;word-break:break-all}
.card{border:1px solid #ccc;border-radius:8px;padding:8px 12px;margin:10px 0}
.row{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0} .num{text-align:right;font-variant-numeric:tabular-nums}
.up{color:#1a7f37} .down{color:#b3261e} .small{font-size:12px;color:#555}
nav a{margin-right:10px}
"""


# -- small helpers -----------------------------------------------------------------------------------


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers rounded for display; anything else as text ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def _signed(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    css = "up" if value > 0 else "down" if value < 0 else ""
    return f'<span class="{css}">{value:+.{digits}f}</span>'


def _share(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f}%"


def tile(item: Item, lines: Iterable[str] = (), highlight: bool = False) -> str:
    """One image with caption lines (already HTML) under it."""
    img = f'<img src="{data_uri(item.image)}" alt="{_e(item.product_id or "image")}">' if item.image else ""
    caption = "<br>".join(lines)
    ident = f'<div class="id">{_e(item.product_id)}</div>' if item.product_id else ""
    css = "tile hl" if highlight else "tile"
    return f'<div class="{css}">{img}{caption}{ident}</div>'


def image_tile(image: bytes | None, lines: Iterable[str] = (), highlight: bool = True) -> str:
    """A generated image (no product) with caption lines."""
    return tile(Item(image=image), lines, highlight)


def product_lines(item: Item) -> list[str]:
    """Caption lines for a product: colour + category, then whatever scores it carries."""
    lines = []
    label = " ".join(part for part in (item.colour, item.category) if part)
    if label:
        lines.append(_e(label))
    if item.preference is not None:
        lines.append(f"pref {fmt(item.preference)}")
    if item.similarity is not None:
        lines.append(f"sim {fmt(item.similarity)}")
    return lines


def _has_colour(colour: str) -> Callable[[Item], bool]:
    return lambda item: item.colour == colour


def _looks_like(query: Item) -> Callable[[Item], bool]:
    """Same category and colour as ``query``."""
    return lambda item: item.category == query.category and item.colour == query.colour


def grid(items: Sequence[Item], highlight: Callable[[Item], bool] | None = None) -> str:
    """A CSS grid of product tiles; ``highlight(item)`` marks some tiles."""
    tiles = [tile(item, product_lines(item), bool(highlight and highlight(item))) for item in items]
    return '<div class="grid">' + "".join(tiles) + "</div>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """A plain HTML table; cells are escaped unless they are already marked up (start with '<')."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell if isinstance(cell, str) and cell.startswith("<") else _e(fmt(cell))
            css = ' class="num"' if i in numeric else ""
            cells.append(f"<td{css}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def svg_line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 640,
    height: int = 260,
    vlines: Sequence[tuple[float, str]] = (),
) -> str:
    """An inline SVG line chart (no plotting library needed). ``series``: (label, xs, ys)."""
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    left, right, top, bottom = 64, 16, 28 if title else 12, 44
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title or y_label)}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        parts.append(f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="14">{_e(title)}</text>')
    if not points:
        parts.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.08 or abs(y0) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i in range(5):  # y ticks
        value = y0 + (y1 - y0) * i / 4
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{value:.3g}</text>')
    for i in range(6):  # x ticks
        value = x0 + (x1 - x0) * i / 5
        x = sx(value)
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11">{value:.0f}</text>')
    for x, label in vlines:
        parts.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + ph}" stroke="#888" stroke-dasharray="4 3"/>'
        )
        parts.append(f'<text x="{sx(x) + 4:.1f}" y="{top + 12}" font-size="11" fill="#555">{_e(label)}</text>')
    for n, (label, xs, ys) in enumerate(series):
        colour = colours[n % len(colours)]
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if not pts:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts)
        parts.append(f'<text x="{left + 8}" y="{top + 16 + 14 * n}" font-size="12" fill="{colour}">{_e(label)}</text>')
    if x_label:
        parts.append(
            f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" font-size="12">{_e(x_label)}</text>'
        )
    if y_label:
        parts.append(
            f'<text x="14" y="{top + ph / 2:.0f}" text-anchor="middle" font-size="12" '
            f'transform="rotate(-90 14 {top + ph / 2:.0f})">{_e(y_label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# -- sections ----------------------------------------------------------------------------------------


def _what(text: str) -> str:
    return f'<p class="what">{_e(text)}</p>'


def _what_generated(text: str) -> str:
    """What a section of generated images shows, and why the images are rough."""
    return _what(text) + f'<p class="small">{_e(GAN_NOTE)}</p>'


def _error(results: DemoResults, *keys: str) -> str:
    found = [f"{key}: {results.errors[key]}" for key in keys if key in results.errors]
    return "".join(f'<div class="error">This part failed: {_e(msg)}</div>' for msg in found)


def _overview(r: DemoResults) -> str:
    out = [
        _what(
            "What ran: the data, the models in the Triton model repository, and the wall time of each stage "
            "of the demo (every service ran as its own process on 127.0.0.1, all neural compute in a local Triton)."
        )
    ]
    if r.data:
        out.append(
            table(
                [
                    "dataset",
                    "provenance",
                    "catalogue products",
                    "held-out images (queries)",
                    "shoppers",
                    "categories",
                    "colours",
                ],
                [
                    [
                        f"{r.data.name} ({r.data.source})",
                        r.data.provenance,
                        r.data.catalogue_items,
                        r.data.heldout_items,
                        r.data.users,
                        ", ".join(r.data.categories),
                        ", ".join(r.data.colours),
                    ]
                ],
            )
        )
    if r.models:
        out.append("<p>" + "<br>".join(_e(line) for line in _model_lines(r.models)) + "</p>")
        if r.models.versions:
            out.append(table(["model", "version served"], sorted(r.models.versions.items())))
    if r.timings.stages_s:
        out.append(table(["stage", "seconds"], [[k, float(v)] for k, v in r.timings.stages_s.items()], numeric=(1,)))
    if r.timings.calls_ms:
        out.append("<h3>Latency per call (client side, one call each)</h3>")
        out.append(table(["call", "ms"], [[k, float(v)] for k, v in r.timings.calls_ms.items()], numeric=(1,)))
    return "".join(out)


def _model_lines(models: ModelsSummary) -> list[str]:
    lines = [
        f"training: {models.training_reason}"
        if models.trained
        else f"training: not needed ({models.training_reason or 'trained models found'})"
    ]
    if models.installed:
        lines.append(f"shipped models: {models.install_reason}")
    if models.exported:
        lines.append(f"ONNX export: {models.export_reason or 'done'}")
    if models.parity_failed:
        lines.append(f"ONNX parity check FAILED for {', '.join(models.parity_failed)}")
    lines.append(f"model repository: {models.publish_reason}")
    if models.user_vectors:
        lines.append(f"user vectors: {models.user_vectors}")
    return lines


def _indexing(r: DemoResults) -> str:
    idx = r.indexing
    out = [
        _what(
            "The whole catalogue streamed once through the orchestrator's IndexCatalogue, which embeds every "
            "product twice (DVBPR item vectors in the scoring service, visual embeddings in the retrieval "
            "service) and stores them in milvus-lite; the index starts empty on every demo run."
        )
    ]
    if idx:
        out.append(
            table(
                [
                    "products",
                    "seconds",
                    "products / s",
                    "scoring: upserted / total / encoder",
                    "retrieval: upserted / total / encoder",
                ],
                [
                    [
                        idx.items,
                        float(idx.seconds),
                        float(idx.items_per_s),
                        _index_side(idx.scoring),
                        _index_side(idx.retrieval),
                    ]
                ],
                numeric=(0, 1, 2),
            )
        )
        if idx.per_category:
            out.append(table(["category", *idx.per_category.keys()], [["products", *idx.per_category.values()]]))
    return "".join(out)


def _index_side(side: IndexSide) -> str:
    return f"{side.upserted} / {side.total} / {side.encoder}"


def _provenance(r: DemoResults) -> str:
    return r.data.provenance if r.data else "simulated"


def _kind(r: DemoResults) -> str:
    """'simulated ' on the simulated world, '' on real data (for phrases like 'a simulated shopper')."""
    return "simulated " if _provenance(r) == "simulated" else ""


def _recommend(r: DemoResults) -> str:
    out = [
        _what(
            "Top-10 catalogue products by DVBPR preference (theta_u . Phi(image)) from the scoring service: "
            f"first for a {_kind(r)}shopper the model was trained on (with their training purchases, which "
            "Recommend excludes), then for a new shopper folded in from a few liked products."
        )
    ]
    user = r.recommend.user
    if user:
        out.append(f"<h3>Trained shopper {_e(user.user_id)}</h3>")
        out.append(f"<p>{len(user.purchases)} training purchases ({_e(_provenance(r))}):</p>")
        out.append(grid(user.purchases))
        bought = {(p.category, p.colour) for p in user.purchases}
        out.append(
            f"<p>Top-10 recommendations ({_e(user.model)}, {fmt(user.latency_ms, 1)} ms); "
            f"{_share(user.share_bought_category)} are in a category the shopper bought; highlighted: same "
            "category and colour as a purchase.</p>"
        )
        out.append(grid(user.products, lambda it: (it.category, it.colour) in bought))
    new = r.recommend.new_user
    if new:
        out.append(f"<h3>New shopper {_e(new.user_id)} (folded in: {fmt(new.folded_in)})</h3>")
        out.append(f"<p>Liked products ({_e(new.liked_colour)} {_e(new.liked_category)}):</p>")
        out.append(grid(new.liked))
        out.append(
            f"<p>Top-10 ({fmt(new.latency_ms, 1)} ms): {_share(new.share_same_colour)} share the liked "
            f"colour, {_share(new.share_same_category)} the liked category (highlighted: both).</p>"
        )
        out.append(grid(new.products, lambda it: it.colour == new.liked_colour and it.category == new.liked_category))
    return "".join(out)


def _design(r: DemoResults) -> str:
    out = [
        _what_generated(
            "New items designed by gradient ascent on the GAN latent (preference maximisation) for one shopper and for a "
            "group, then the nearest real catalogue products to each design with the audience's preference for them "
            "(sim = image similarity of the product to the design)."
        )
    ]
    for part in (r.design.user, r.design.group):
        if part:
            out.append(_design_run(part))
    return "".join(out)


def _design_run(part: DesignRun) -> str:
    steps = f"{part.steps} Adam steps; " if part.steps else ""
    out = [
        f"<h3>{_e(part.title)}</h3>",
        f"<p>{_e(part.audience)}; category {_e(part.category)}; objective: {_e(part.objective_name)}; "
        f"{steps}{fmt(part.latency_ms, 0)} ms for the whole call.</p>",
    ]
    if part.median_threshold is not None:
        out.append(
            f"<p>To enter a member's top-{part.top_k} a design must beat that member's "
            f"{part.top_k}th-best {_e(part.category)} product (median over the group: "
            f"{fmt(part.median_threshold)}).</p>"
        )
    for n, design in enumerate(part.designs, 1):
        objective = (
            f"top-{part.top_k} share {_share(design.objective)}" if part.top_k else f"objective {fmt(design.objective)}"
        )
        lines = [
            f"design {n}",
            objective,
            f"pref {fmt(design.preference_before)} &rarr; {fmt(design.preference_after)}",
            f"realism {fmt(design.realism)}",
        ]
        out.append(
            _card(
                image_tile(design.image, lines),
                "nearest real products (pref = audience preference)",
                grid(design.products),
            )
        )
    return "".join(out)


def _card(head: str, caption: str, body: str) -> str:
    """A card: a tile (or tiles) on the left, a small caption and a grid on the right."""
    return (
        f'<div class="card"><div class="row">{head}<div style="flex:1"><div class="small">{caption}</div>'
        f"{body}</div></div></div>"
    )


def _pair(first: str, second: str) -> str:
    """Two tiles side by side (a query and what the system made of it)."""
    return f'<div class="grid" style="grid-template-columns:repeat(2,112px)">{first}{second}</div>'


def _alter(r: DemoResults) -> str:
    alt = r.alter
    out = [
        _what_generated(
            "Personalised alteration of an existing catalogue product, streamed through the orchestrator: the product is "
            "first inverted into the GAN's latent space (reconstruction loss falls), then the latent is optimised for the "
            "shopper (preference rises). Each frame below is a reported step."
        )
    ]
    if not alt:
        return "".join(out)
    out.append(
        f"<p>Shopper {_e(alt.user_id)}, product {_e(alt.product.product_id)}; "
        f"{fmt(alt.latency_ms, 0)} ms for the whole stream ({alt.messages} messages).</p>"
    )
    out.append(
        table(
            ["", "seller's original", "inverted (start of optimisation)", "altered (final)", "change"],
            [
                [
                    "preference",
                    alt.preference_original,
                    alt.preference_inverted,
                    alt.preference_final,
                    _signed(_diff(alt.preference_final, alt.preference_inverted)),
                ]
            ],
        )
    )
    frames = [tile(alt.product, ["original"], True)]
    for frame in alt.frames:
        lines = [f"{_e(frame.phase.lower())} step {frame.step}"]
        if frame.phase == "INVERSION":
            lines.append(f"recon loss {fmt(frame.reconstruction_loss, 4)}")
        if frame.preference is not None:
            lines.append(f"pref {fmt(frame.preference)}")
        frames.append(image_tile(frame.image, lines, frame.phase == "DONE"))
    out.append('<div class="grid">' + "".join(frames) + "</div>")
    series, vlines, loss = alter_chart_series(alt.frames)
    if series:
        out.append(
            svg_line_chart(
                series,
                title="preference of the shopper at each reported step",
                x_label="step (inversion, then optimisation)",
                y_label="preference",
                vlines=vlines,
            )
        )
    if loss:
        out.append(
            svg_line_chart(
                loss, title="reconstruction loss during inversion", x_label="inversion step", y_label="loss", height=200
            )
        )
    return "".join(out)


def alter_chart_series(
    frames: Sequence[AlterFrame],
) -> tuple[
    list[tuple[str, list[float], list[float]]], list[tuple[float, str]], list[tuple[str, list[float], list[float]]]
]:
    """Chart data of an Alter trajectory: preference per frame on one step axis (optimisation steps follow the
    inversion steps), a marker where optimisation starts, and the inversion's reconstruction loss."""
    inversion = [f for f in frames if f.phase == "INVERSION"]
    optimisation = [f for f in frames if f.phase == "OPTIMIZATION"]
    offset = max((f.step for f in inversion), default=0)
    series: list[tuple[str, list[float], list[float]]] = []

    def points(pairs: Iterable[tuple[float, float | None]]) -> tuple[list[float], list[float]]:
        kept = [(x, float(y)) for x, y in pairs if y is not None]
        return [x for x, _ in kept], [y for _, y in kept]

    xs, ys = points(
        [(float(f.step), f.preference) for f in inversion]
        + [(float(offset + f.step), f.preference) for f in optimisation]
    )
    if xs:
        series.append(("preference (ScoreItems on the frame's image)", xs, ys))
    xs, ys = points((float(offset + f.step), f.objective) for f in optimisation)
    if xs:
        series.append(("objective the latent service reported", xs, ys))
    vlines = [(float(offset), "optimisation starts")] if inversion and optimisation else []
    xs, ys = points((float(f.step), f.reconstruction_loss) for f in inversion)
    loss = [("reconstruction loss", xs, ys)] if xs else []
    return series, vlines, loss


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _seller(r: DemoResults) -> str:
    sel = r.seller
    out = [
        _what_generated(
            "GIGS seller feedback: the seller's product is inverted into the latent space, then several distinct variants "
            "within a small radius are optimised to raise the mean preference of a group of shoppers; each variant comes "
            "with the existing products it would compete with."
        )
    ]
    if not sel:
        return "".join(out)
    out.append(
        f"<p>{_e(sel.audience)}; {_e(sel.settings)}; {fmt(sel.latency_ms, 0)} ms "
        "for the whole call. "
        f"Base preference (inverted item): {fmt(sel.base_preference)}; preference for the seller's "
        f"original photo: {fmt(sel.original_preference)}.</p>"
    )
    base = _pair(
        tile(sel.product, [*product_lines(sel.product), "seller's original"], True),
        image_tile(sel.base_image, ["inverted base", f"pref {fmt(sel.base_preference)}"]),
    )
    out.append(
        f'<div class="row">{base}<div style="flex:1"><div class="small">competitors of the seller\'s item</div>'
        + grid(sel.item_competitors)
        + "</div></div>"
    )
    for n, variant in enumerate(sel.variants, 1):
        lines = [
            f"variant {n}",
            f"pref {fmt(variant.preference_before)} &rarr; {fmt(variant.preference_after)}",
            f"shift {_signed(variant.preference_shift)}",
            f"1-SSIM {fmt(variant.opposite_ssim)}",
            f"|shift| {fmt(variant.shift_norm)}",
        ]
        out.append(
            _card(
                image_tile(variant.image, lines), "competitors (nearest existing products)", grid(variant.competitors)
            )
        )
    return "".join(out)


def _multimodal(r: DemoResults) -> str:
    mm = r.multimodal
    out = [
        _what(
            "Image + text search: the SynthTriplet generator turns a held-out image and a change in words into "
            "a synthetic query image (what the system understood), the retrieval service finds the nearest "
            "real products, and the orchestrator re-ranks them by the shopper's preference."
        )
    ]
    if mm.skipped:
        out.append(f"<p>No multimodal search in this deployment: {_e(mm.skipped)}</p>")
    if mm.user_id and mm.queries:
        out.append(f"<p>Re-ranked for {_e(mm.user_id)}; highlighted hits have the requested value.</p>")
    for q in mm.queries:
        head = _pair(
            tile(q.query, [*product_lines(q.query), "held-out query"], True),
            image_tile(q.synthetic_image, [f"&ldquo;{_e(q.text)}&rdquo;", "synthetic query"]),
        )
        caption = (
            f"{fmt(q.latency_ms, 0)} ms; {_share(q.share_requested_colour)} of the hits are "
            f"{_e(q.requested_colour)}, {_share(q.share_same_category)} in the query's category"
        )
        out.append(_card(head, caption, grid(q.hits, _has_colour(q.requested_colour))))
    return "".join(out)


def _search(r: DemoResults) -> str:
    se = r.search
    out = [
        _what(
            "Image-to-image search with the InfoGAN-discriminator embedding (trained without labels): held-out "
            "images (never indexed) as queries; highlighted hits share the query's category and colour. Then "
            "precision@10 over many held-out queries: the share of the 10 hits in the query's category, "
            "colour (where the data has one), and Fashion-MNIST class (the simulated world only)."
        )
    ]
    for ex in se.examples:
        query = ex.query
        out.append(
            _card(
                tile(query, [*product_lines(query), "held-out query"], True),
                f"{fmt(ex.latency_ms, 1)} ms",
                grid(ex.hits, _looks_like(query)),
            )
        )
    prec = se.precision
    if prec:
        out.append(f"<h3>precision@{prec.k} over {prec.queries} held-out queries</h3>")
        out.append(
            table(
                [
                    "by category",
                    "by colour",
                    "by Fashion-MNIST class",
                    "median ms / query",
                    "p90 ms / query",
                    "chance (category)",
                ],
                [[prec.category, prec.colour, prec.fm_class, prec.median_ms, prec.p90_ms, prec.chance_category]],
                numeric=(0, 1, 2, 3, 4, 5),
            )
        )
        if prec.per_category:
            out.append(
                table(
                    ["query category", "precision by category", "precision by colour", "queries"],
                    [[c, v.category, v.colour, v.queries] for c, v in prec.per_category.items()],
                    numeric=(1, 2, 3),
                )
            )
    return "".join(out)


def _services(r: DemoResults) -> str:
    out = [
        _what(
            "What each service reported through the diagnostics service (GetStatus) and gRPC reflection while "
            "the demo ran: its dependencies and whether they were ready, its settings (backends, model "
            "versions) and any fallbacks taken; then its exit code after a graceful stop."
        )
    ]
    if r.served_models:
        out.append(table(["reply of", "model version named in the reply"], sorted(r.served_models.items())))
    for key, info in r.services.items():
        deps = table(["dependency", "ready", "detail"], [[d.name, d.ready, d.detail] for d in info.dependencies])
        settings = table(["setting", "value"], sorted(info.settings.items()))
        fallbacks = info.fallbacks or ["none"]
        out.append(
            f'<div class="card"><h3>{_e(key)} <span class="small">{_e(info.target)}, serving: '
            f"{fmt(info.serving)}, version {_e(info.version)}, exit code "
            f'{_e(fmt(info.exit_code))}</span></h3><div class="row"><div>{deps}</div><div>{settings}</div>'
            f'</div><div class="small">fallbacks: {_e("; ".join(fallbacks))}<br>reflected services: '
            f"{_e(', '.join(info.reflection))}</div></div>"
        )
    return "".join(out)


_RENDERERS: dict[str, Callable[[DemoResults], str]] = {
    "overview": _overview,
    "indexing": _indexing,
    "recommend": _recommend,
    "design": _design,
    "alter": _alter,
    "seller": _seller,
    "multimodal": _multimodal,
    "search": _search,
    "services": _services,
}


def render_html(results: DemoResults) -> str:
    """The whole report as one self-contained HTML page."""
    nav = " ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    body = [
        f'<h1>couturier demo</h1><p class="small">profile {_e(results.profile)}, generated '
        f"{_e(results.generated_at)}, data {_e(results.data_dir)}</p>",
        f'<p class="notice">{_e(data_notice(results))}</p>',
        f"<nav>{nav}</nav>",
    ]
    for sid, title in SECTIONS:
        body.append(f'<section id="{sid}"><h2>{_e(title)}</h2>')
        body.append(_RENDERERS[sid](results))
        body.append(_error(results, sid))
        body.append("</section>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>couturier demo report</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


# -- markdown and JSON ---------------------------------------------------------------------------------


def render_markdown(results: DemoResults, html_name: str = "demo_report.html") -> str:
    """A short summary: the numbers, with the pictures left to the HTML report."""
    lines = [
        "# couturier demo (embedded default)",
        "",
        f"> {data_notice(results)}",
        "",
        f"Full report with images: `{html_name}`; numbers: `demo_report.json`.",
        "",
    ]
    if results.models:
        lines += [f"- {line}" for line in _model_lines(results.models)] + [""]
    timings = results.timings
    if timings.stages_s:
        lines += [
            "| stage | seconds |",
            "|---|---|",
            *(f"| {k} | {fmt(float(v), 1)} |" for k, v in timings.stages_s.items()),
            "",
        ]
    idx = results.indexing
    if idx:
        lines += [
            f"Indexing: {idx.items} products in {fmt(idx.seconds, 1)} s "
            f"({fmt(idx.items_per_s, 1)} products/s) through the orchestrator.",
            "",
        ]
    if timings.calls_ms:
        lines += [
            "| call | ms |",
            "|---|---|",
            *(f"| {k} | {fmt(float(v), 1)} |" for k, v in timings.calls_ms.items()),
            "",
        ]
    prec = results.search.precision
    if prec:
        lines += [
            f"SearchByImage precision@{prec.k} over {prec.queries} held-out queries: category "
            f"{fmt(prec.category)}, colour {fmt(prec.colour)}, class {fmt(prec.fm_class)}; "
            f"median {fmt(prec.median_ms, 1)} ms per query.",
            "",
        ]
    alt = results.alter
    if alt:
        lines += [
            f"Alter: preference {fmt(alt.preference_inverted)} (inverted) -> "
            f"{fmt(alt.preference_final)} (altered) for {alt.user_id}.",
            "",
        ]
    sel = results.seller
    if sel and sel.variants:
        shifts = ", ".join(f"{v.preference_shift:+.3f}" for v in sel.variants)
        lines += [f"SellerFeedback: base preference {fmt(sel.base_preference)}; variant shifts {shifts}.", ""]
    if results.services:
        lines += ["| service | serving | dependencies | exit code |", "|---|---|---|---|"]
        for key, info in results.services.items():
            deps = ", ".join(f"{d.name}={'ready' if d.ready else 'NOT ready'}" for d in info.dependencies) or "none"
            lines.append(f"| {key} | {fmt(info.serving)} | {deps} | {fmt(info.exit_code)} |")
        lines.append("")
    if results.errors:
        lines += ["## Failed parts", "", *(f"- {k}: {v}" for k, v in results.errors.items()), ""]
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """The results (a dataclass, or what :func:`dataclasses.asdict` makes of one) without image bytes,
    with tuples as lists and non-finite floats as None, ready for ``json.dumps``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items() if not isinstance(v, (bytes, bytearray))}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value if not isinstance(v, (bytes, bytearray))]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
