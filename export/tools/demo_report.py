"""Render the main job's results (``couturier demo``) as one self-contained HTML page, markdown and JSON.

Pure functions: they take the results dictionary that :mod:`couturier.export.tools.demo` collects and
return text; nothing here talks to a service. Images are PNG ``bytes`` inside the dictionary; the
HTML embeds them as ``data:image/png;base64`` URIs (no file next to the page is needed), the JSON
drops them.

Shape of the results dictionary (every section may be missing; ``errors`` maps a section id to the
reason it has no results)::

    {"profile", "data_dir", "generated_at",
     "data": {"catalogue_items", "heldout_items", "users", "categories", "colours"},
     "models": {"trained", "training_reason", "exported", "published", "publish_reason", "versions",
                "user_vectors"},
     "timings_s": {stage: seconds},
     "indexing": {"items", "seconds", "items_per_s", "scoring": {...}, "retrieval": {...}},
     "recommend": {"user": {...}, "new_user": {...}},
     "design": {"user": {...}, "group": {...}},
     "alter": {...}, "seller": {...}, "multimodal": {"queries": [...]},
     "search": {"examples": [...], "precision": {...}},
     "services": {service: {"target", "serving", "dependencies", "settings", ...}},
     "latency_ms": {flow: milliseconds},
     "errors": {section id: message}}

An *item* (a product or an image shown as a tile) is a dict with optional keys ``image`` (PNG
bytes), ``product_id``, ``category``, ``colour``, ``score``, ``similarity``, ``preference`` and
``note``.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


def tile(item: Mapping[str, Any], lines: Iterable[str] = (), highlight: bool = False) -> str:
    """One image with caption lines (already HTML) under it."""
    image = item.get("image")
    img = f'<img src="{data_uri(image)}" alt="{_e(item.get("product_id") or "image")}">' if image else ""
    caption = "<br>".join(lines)
    ident = f'<div class="id">{_e(item["product_id"])}</div>' if item.get("product_id") else ""
    css = "tile hl" if highlight else "tile"
    return f'<div class="{css}">{img}{caption}{ident}</div>'


def product_lines(item: Mapping[str, Any]) -> list[str]:
    """Caption lines for a product: colour + category, then whatever scores it carries."""
    lines = []
    label = " ".join(part for part in (item.get("colour"), item.get("category")) if part)
    if label:
        lines.append(_e(label))
    if item.get("note"):
        lines.append(_e(item["note"]))
    if item.get("preference") is not None:
        lines.append(f"pref {fmt(item['preference'])}")
    if item.get("score") is not None and item.get("preference") is None:
        lines.append(f"{_e(item.get('score_name', 'score'))} {fmt(item['score'])}")
    if item.get("similarity") is not None:
        lines.append(f"sim {fmt(item['similarity'])}")
    return lines


def grid(items: Sequence[Mapping[str, Any]], highlight: Any = None) -> str:
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
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title or y_label)}">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
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
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + ph}" stroke="#888" stroke-dasharray="4 3"/>')
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
        parts.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" font-size="12">{_e(x_label)}</text>')
    if y_label:
        parts.append(f'<text x="14" y="{top + ph / 2:.0f}" text-anchor="middle" font-size="12" '
                     f'transform="rotate(-90 14 {top + ph / 2:.0f})">{_e(y_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- sections ----------------------------------------------------------------------------------------


def _what(text: str) -> str:
    return f'<p class="what">{_e(text)}</p>'


def _error(results: Mapping[str, Any], *keys: str) -> str:
    errors = results.get("errors", {})
    found = [f"{key}: {errors[key]}" for key in keys if key in errors]
    return "".join(f'<div class="error">This part failed: {_e(msg)}</div>' for msg in found)


def _overview(r: Mapping[str, Any]) -> str:
    data, models, timings = r.get("data", {}), r.get("models", {}), r.get("timings_s", {})
    out = [_what("What ran: the data, the models in the Triton model repository, and the wall time of each stage "
                 "of the demo (every service ran as its own process on 127.0.0.1, all neural compute in a local Triton).")]
    if data:
        out.append(table(["catalogue products", "held-out images (queries)", "simulated shoppers", "categories", "colours"],
                         [[data.get("catalogue_items"), data.get("heldout_items"), data.get("users"),
                           ", ".join(data.get("categories", [])), ", ".join(data.get("colours", []))]]))
    if models:
        out.append("<p>" + "<br>".join(_e(line) for line in _model_lines(models)) + "</p>")
        versions = models.get("versions", {})
        if versions:
            out.append(table(["model", "version served"], sorted(versions.items())))
    if timings:
        out.append(table(["stage", "seconds"], [[k, float(v)] for k, v in timings.items()], numeric=(1,)))
    latency = r.get("latency_ms", {})
    if latency:
        out.append("<h3>Latency per call (client side, one call each)</h3>")
        out.append(table(["call", "ms"], [[k, float(v)] for k, v in latency.items()], numeric=(1,)))
    return "".join(out)


def _model_lines(models: Mapping[str, Any]) -> list[str]:
    lines = [f"training: {models.get('training_reason', '')}" if models.get("trained")
             else f"training: not needed ({models.get('training_reason', 'trained models found')})"]
    if models.get("exported"):
        lines.append(f"ONNX export: {models.get('export_reason', 'done')}")
    lines.append(f"model repository: {models.get('publish_reason', '')}")
    if models.get("user_vectors"):
        lines.append(f"user vectors: {models['user_vectors']}")
    return lines


def _indexing(r: Mapping[str, Any]) -> str:
    idx = r.get("indexing")
    out = [_what("The whole catalogue streamed once through the orchestrator's IndexCatalogue, which embeds every "
                 "product twice (DVBPR item vectors in the scoring service, visual embeddings in the retrieval "
                 "service) and stores them in milvus-lite; the index starts empty on every demo run.")]
    if idx:
        out.append(table(
            ["products", "seconds", "products / s", "scoring: upserted / total / encoder", "retrieval: upserted / total / encoder"],
            [[idx.get("items"), float(idx.get("seconds", 0.0)), float(idx.get("items_per_s", 0.0)),
              _index_side(idx.get("scoring", {})), _index_side(idx.get("retrieval", {}))]],
            numeric=(0, 1, 2),
        ))
        per_category = idx.get("per_category", {})
        if per_category:
            out.append(table(["category", *per_category.keys()], [["products", *per_category.values()]]))
    return "".join(out)


def _index_side(side: Mapping[str, Any]) -> str:
    return f"{side.get('upserted', '')} / {side.get('total', '')} / {side.get('encoder', '')}"


def _recommend(r: Mapping[str, Any]) -> str:
    rec = r.get("recommend", {})
    out = [_what("Top-10 catalogue products by DVBPR preference (theta_u . Phi(image)) from the scoring service: "
                 "first for a simulated shopper the model was trained on (with their training purchases, which "
                 "Recommend excludes), then for a new shopper folded in from a few liked products.")]
    user = rec.get("user")
    if user:
        out.append(f"<h3>Trained shopper {_e(user.get('user_id'))}</h3>")
        out.append(f"<p>{len(user.get('purchases', []))} training purchases (simulated):</p>")
        out.append(grid(user.get("purchases", [])))
        bought = {(p.get("category"), p.get("colour")) for p in user.get("purchases", [])}
        share = user.get("share_bought_category")
        out.append(f"<p>Top-10 recommendations ({_e(user.get('model', ''))}, {fmt(user.get('latency_ms'), 1)} ms); "
                   f"{_share(share)} are in a category the shopper bought; highlighted: same category and colour "
                   "as a purchase.</p>")
        out.append(grid(user.get("products", []), lambda it: (it.get("category"), it.get("colour")) in bought))
    new = rec.get("new_user")
    if new:
        out.append(f"<h3>New shopper {_e(new.get('user_id'))} (folded in: {fmt(new.get('folded_in'))})</h3>")
        out.append(f"<p>Liked products ({_e(new.get('liked_colour', ''))} {_e(new.get('liked_category', ''))}):</p>")
        out.append(grid(new.get("liked", [])))
        out.append(f"<p>Top-10 ({fmt(new.get('latency_ms'), 1)} ms): {_share(new.get('share_same_colour'))} share the liked "
                   f"colour, {_share(new.get('share_same_category'))} the liked category (highlighted: both).</p>")
        out.append(grid(new.get("products", []), lambda it: it.get("colour") == new.get("liked_colour")
                        and it.get("category") == new.get("liked_category")))
    return "".join(out)


def _design(r: Mapping[str, Any]) -> str:
    des = r.get("design", {})
    out = [_what("New items designed by gradient ascent on the GAN latent (preference maximisation) for one "
                 "shopper and for a group, then the nearest real catalogue products to each design with the "
                 "audience's preference for them (sim = image similarity of the product to the design)."), f'<p class="small">{_e(GAN_NOTE)}</p>']
    for key in ("user", "group"):
        part = des.get(key)
        if not part:
            continue
        out.append(f"<h3>{_e(part.get('title', key))}</h3>")
        steps = f"{part['steps']} Adam steps; " if part.get("steps") else ""
        out.append(f"<p>{_e(part.get('audience', ''))}; category {_e(part.get('category', ''))}; objective: "
                   f"{_e(part.get('objective_name', ''))}; {steps}{fmt(part.get('latency_ms'), 0)} ms for the whole "
                   "call.</p>")
        if part.get("median_threshold") is not None:
            out.append(f"<p>To enter a member's top-{part.get('top_k')} a design must beat that member's "
                       f"{part.get('top_k')}th-best {_e(part.get('category', ''))} product (median over the group: "
                       f"{fmt(part['median_threshold'])}).</p>")
        for n, design in enumerate(part.get("designs", []), 1):
            objective = (f"top-{part['top_k']} share {_share(design.get('objective'))}" if part.get("top_k")
                         else f"objective {fmt(design.get('objective'))}")
            lines = [f"design {n}", objective,
                     f"pref {fmt(design.get('preference_before'))} &rarr; {fmt(design.get('preference_after'))}",
                     f"realism {fmt(design.get('realism'))}"]
            products = design.get("products", [])
            out.append('<div class="card"><div class="row">' + tile({"image": design.get("image")}, lines, True)
                       + '<div style="flex:1"><div class="small">nearest real products (pref = audience preference)</div>'
                       + grid(products) + "</div></div></div>")
    return "".join(out)


def _alter(r: Mapping[str, Any]) -> str:
    alt = r.get("alter")
    out = [_what("Personalised alteration of an existing catalogue product, streamed by the latent service: the "
                 "product is first inverted into the GAN's latent space (reconstruction loss falls), then the latent "
                 "is optimised for the shopper (preference rises). Each frame below is a reported step."), f'<p class="small">{_e(GAN_NOTE)}</p>']
    if not alt:
        return "".join(out)
    out.append(f"<p>Shopper {_e(alt.get('user_id'))}, product {_e(alt.get('product', {}).get('product_id', ''))}; "
               f"{fmt(alt.get('latency_ms'), 0)} ms for the whole stream ({alt.get('messages', 0)} messages).</p>")
    out.append(table(
        ["", "seller's original", "inverted (start of optimisation)", "altered (final)", "change"],
        [["preference", alt.get("preference_original"), alt.get("preference_inverted"), alt.get("preference_final"),
          _signed(_diff(alt.get("preference_final"), alt.get("preference_inverted")))]],
    ))
    frames = [tile(alt.get("product", {}), ["original"], True)]
    for frame in alt.get("frames", []):
        lines = [f"{_e(frame.get('phase', '').lower())} step {frame.get('step')}"]
        if frame.get("phase") == "INVERSION":
            lines.append(f"recon loss {fmt(frame.get('reconstruction_loss'), 4)}")
        if frame.get("preference") is not None:
            lines.append(f"pref {fmt(frame.get('preference'))}")
        frames.append(tile(frame, lines, frame.get("phase") == "DONE"))
    out.append('<div class="grid">' + "".join(frames) + "</div>")
    series, vlines, loss = alter_chart_series(alt.get("frames", []))
    if series:
        out.append(svg_line_chart(series, title="preference of the shopper at each reported step",
                                  x_label="step (inversion, then optimisation)", y_label="preference", vlines=vlines))
    if loss:
        out.append(svg_line_chart(loss, title="reconstruction loss during inversion", x_label="inversion step",
                                  y_label="loss", height=200))
    return "".join(out)


def alter_chart_series(
    frames: Sequence[Mapping[str, Any]],
) -> tuple[list[tuple[str, list[float], list[float]]], list[tuple[float, str]], list[tuple[str, list[float], list[float]]]]:
    """Chart data of an Alter trajectory: preference per frame on one step axis (optimisation steps follow the
    inversion steps), a marker where optimisation starts, and the inversion's reconstruction loss."""
    inversion = [f for f in frames if f.get("phase") == "INVERSION"]
    optimisation = [f for f in frames if f.get("phase") == "OPTIMIZATION"]
    offset = max((int(f.get("step", 0)) for f in inversion), default=0)
    series: list[tuple[str, list[float], list[float]]] = []
    scored = [(float(f["step"]), f.get("preference")) for f in inversion]
    scored += [(float(offset + int(f["step"])), f.get("preference")) for f in optimisation]
    scored = [(x, float(y)) for x, y in scored if y is not None]
    if scored:
        series.append(("preference (ScoreItems on the frame's image)", [x for x, _ in scored], [y for _, y in scored]))
    reported = [(float(offset + int(f["step"])), f.get("objective")) for f in optimisation if f.get("objective") is not None]
    if reported:
        series.append(("objective the latent service reported", [x for x, _ in reported], [float(y) for _, y in reported]))
    vlines = [(float(offset), "optimisation starts")] if inversion and optimisation else []
    losses = [(float(f["step"]), f.get("reconstruction_loss")) for f in inversion if f.get("reconstruction_loss") is not None]
    loss = [("reconstruction loss", [x for x, _ in losses], [float(y) for _, y in losses])] if losses else []
    return series, vlines, loss


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _seller(r: Mapping[str, Any]) -> str:
    sel = r.get("seller")
    out = [_what("GIGS seller feedback: the seller's product is inverted into the latent space, then several "
                 "distinct variants within a small radius are optimised to raise the mean preference of a group of "
                 "shoppers; each variant comes with the existing products it would compete with."), f'<p class="small">{_e(GAN_NOTE)}</p>']
    if not sel:
        return "".join(out)
    out.append(f"<p>{_e(sel.get('audience', ''))}; {_e(sel.get('settings', ''))}; {fmt(sel.get('latency_ms'), 0)} ms "
               "for the whole call. "
               f"Base preference (inverted item): {fmt(sel.get('base_preference'))}; preference for the seller's "
               f"original photo: {fmt(sel.get('original_preference'))}.</p>")
    base = [tile(sel.get("product", {}), [*product_lines(sel.get("product", {})), "seller's original"], True),
            tile({"image": sel.get("base_image")}, ["inverted base", f"pref {fmt(sel.get('base_preference'))}"], True)]
    out.append('<div class="row"><div class="grid" style="grid-template-columns:repeat(2,112px)">' + "".join(base)
               + '</div><div style="flex:1"><div class="small">competitors of the seller\'s item</div>'
               + grid(sel.get("item_competitors", [])) + "</div></div>")
    rows = []
    for n, variant in enumerate(sel.get("variants", []), 1):
        lines = [f"variant {n}", f"pref {fmt(variant.get('preference_before'))} &rarr; {fmt(variant.get('preference_after'))}",
                 f"shift {_signed(variant.get('preference_shift'))}", f"1-SSIM {fmt(variant.get('opposite_ssim'))}",
                 f"|shift| {fmt(variant.get('shift_norm'))}"]
        rows.append('<div class="card"><div class="row">' + tile({"image": variant.get("image")}, lines, True)
                    + '<div style="flex:1"><div class="small">competitors (nearest existing products)</div>'
                    + grid(variant.get("competitors", [])) + "</div></div></div>")
    out.extend(rows)
    return "".join(out)


def _multimodal(r: Mapping[str, Any]) -> str:
    mm = r.get("multimodal", {})
    out = [_what("Image + text search: the SynthTriplet generator turns a held-out image and a change in words into "
                 "a synthetic query image (what the system understood), the retrieval service finds the nearest "
                 "real products, and the orchestrator re-ranks them by the shopper's preference.")]
    if mm.get("user_id"):
        out.append(f"<p>Re-ranked for {_e(mm['user_id'])}; highlighted hits have the requested colour.</p>")
    for q in mm.get("queries", []):
        query = q.get("query", {})
        head = [tile(query, [*product_lines(query), "held-out query"], True),
                tile({"image": q.get("synthetic_image")}, [f"&ldquo;{_e(q.get('text', ''))}&rdquo;", "synthetic query"], True)]
        out.append('<div class="card"><div class="row"><div class="grid" style="grid-template-columns:repeat(2,112px)">'
                   + "".join(head) + '</div><div style="flex:1">'
                   + f'<div class="small">{fmt(q.get("latency_ms"), 0)} ms; {_share(q.get("share_requested_colour"))} of '
                   f'the hits are {_e(q.get("requested_colour", ""))}, {_share(q.get("share_same_category"))} in the '
                   f'query\'s category</div>'
                   + grid(q.get("hits", []), lambda it, c=q.get("requested_colour"): it.get("colour") == c)
                   + "</div></div></div>")
    return "".join(out)


def _search(r: Mapping[str, Any]) -> str:
    se = r.get("search", {})
    out = [_what("Image-to-image search with the InfoGAN-discriminator embedding (trained without labels): held-out "
                 "images (never indexed) as queries; highlighted hits share the query's category and colour. Then "
                 "precision@10 over many held-out queries: the share of the 10 hits in the query's category, "
                 "colour, and Fashion-MNIST class.")]
    for ex in se.get("examples", []):
        query = ex.get("query", {})
        out.append('<div class="card"><div class="row">' + tile(query, [*product_lines(query), "held-out query"], True)
                   + f'<div style="flex:1"><div class="small">{fmt(ex.get("latency_ms"), 1)} ms</div>'
                   + grid(ex.get("hits", []), lambda it, q=query: it.get("category") == q.get("category")
                          and it.get("colour") == q.get("colour"))
                   + "</div></div></div>")
    prec = se.get("precision")
    if prec:
        out.append(f"<h3>precision@{prec.get('k')} over {prec.get('queries')} held-out queries</h3>")
        out.append(table(
            ["by category", "by colour", "by Fashion-MNIST class", "median ms / query", "p90 ms / query", "chance (category)"],
            [[prec.get("category"), prec.get("colour"), prec.get("class"), prec.get("median_ms"), prec.get("p90_ms"),
              prec.get("chance_category")]],
            numeric=(0, 1, 2, 3, 4, 5),
        ))
        per = prec.get("per_category", {})
        if per:
            out.append(table(["query category", "precision by category", "precision by colour", "queries"],
                             [[c, v.get("category"), v.get("colour"), v.get("queries")] for c, v in per.items()],
                             numeric=(1, 2, 3)))
    return "".join(out)


def _services(r: Mapping[str, Any]) -> str:
    out = [_what("What each service reported through the diagnostics service (GetStatus) and gRPC reflection while "
                 "the demo ran: its dependencies and whether they were ready, its settings (backends, model "
                 "versions) and any fallbacks taken; then its exit code after a graceful stop.")]
    served = r.get("served_models", {})
    if served:
        out.append(table(["reply of", "model version named in the reply"], sorted(served.items())))
    for key, info in r.get("services", {}).items():
        deps = table(["dependency", "ready", "detail"],
                     [[d.get("name"), bool(d.get("ready")), d.get("detail", "")] for d in info.get("dependencies", [])])
        settings = table(["setting", "value"], sorted(info.get("settings", {}).items()))
        fallbacks = info.get("fallbacks") or ["none"]
        out.append(f'<div class="card"><h3>{_e(key)} <span class="small">{_e(info.get("target", ""))}, serving: '
                   f'{fmt(info.get("serving"))}, version {_e(info.get("version", ""))}, exit code '
                   f'{_e(fmt(info.get("exit_code")))}</span></h3><div class="row"><div>{deps}</div><div>{settings}</div>'
                   f'</div><div class="small">fallbacks: {_e("; ".join(fallbacks))}<br>reflected services: '
                   f'{_e(", ".join(info.get("reflection", [])))}</div></div>')
    return "".join(out)


_RENDERERS = {
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


def render_html(results: Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML page."""
    nav = " ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    body = [f"<h1>couturier demo</h1><p class=\"small\">profile {_e(results.get('profile', ''))}, generated "
            f"{_e(results.get('generated_at', ''))}, data {_e(results.get('data_dir', ''))}</p>",
            f'<p class="notice">{_e(SIMULATED_NOTICE)}</p>', f"<nav>{nav}</nav>"]
    for sid, title in SECTIONS:
        body.append(f'<section id="{sid}"><h2>{_e(title)}</h2>')
        body.append(_RENDERERS[sid](results))
        body.append(_error(results, sid))
        body.append("</section>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>couturier demo report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


# -- markdown and JSON ---------------------------------------------------------------------------------


def render_markdown(results: Mapping[str, Any], html_name: str = "demo_report.html") -> str:
    """A short summary: the numbers, with the pictures left to the HTML report."""
    lines = ["# couturier demo (embedded default)", "", f"> {SIMULATED_NOTICE}", "",
             f"Full report with images: `{html_name}`; numbers: `demo_report.json`.", ""]
    models = results.get("models", {})
    if models:
        lines += [f"- {line}" for line in _model_lines(models)] + [""]
    timings = results.get("timings_s", {})
    if timings:
        lines += ["| stage | seconds |", "|---|---|", *(f"| {k} | {fmt(float(v), 1)} |" for k, v in timings.items()), ""]
    idx = results.get("indexing")
    if idx:
        lines += [f"Indexing: {idx.get('items')} products in {fmt(idx.get('seconds'), 1)} s "
                  f"({fmt(idx.get('items_per_s'), 1)} products/s) through the orchestrator.", ""]
    latency = results.get("latency_ms", {})
    if latency:
        lines += ["| call | ms |", "|---|---|", *(f"| {k} | {fmt(float(v), 1)} |" for k, v in latency.items()), ""]
    prec = results.get("search", {}).get("precision")
    if prec:
        lines += [f"SearchByImage precision@{prec.get('k')} over {prec.get('queries')} held-out queries: category "
                  f"{fmt(prec.get('category'))}, colour {fmt(prec.get('colour'))}, class {fmt(prec.get('class'))}; "
                  f"median {fmt(prec.get('median_ms'), 1)} ms per query.", ""]
    alt = results.get("alter")
    if alt:
        lines += [f"Alter: preference {fmt(alt.get('preference_inverted'))} (inverted) -> "
                  f"{fmt(alt.get('preference_final'))} (altered) for {alt.get('user_id')}.", ""]
    sel = results.get("seller")
    if sel and sel.get("variants"):
        shifts = ", ".join(f"{v.get('preference_shift', 0):+.3f}" for v in sel["variants"])
        lines += [f"SellerFeedback: base preference {fmt(sel.get('base_preference'))}; variant shifts {shifts}.", ""]
    services = results.get("services", {})
    if services:
        lines += ["| service | serving | dependencies | exit code |", "|---|---|---|---|"]
        for key, info in services.items():
            deps = ", ".join(f"{d.get('name')}={'ready' if d.get('ready') else 'NOT ready'}"
                             for d in info.get("dependencies", [])) or "none"
            lines.append(f"| {key} | {fmt(info.get('serving'))} | {deps} | {fmt(info.get('exit_code'))} |")
        lines.append("")
    errors = results.get("errors", {})
    if errors:
        lines += ["## Failed parts", "", *(f"- {k}: {v}" for k, v in errors.items()), ""]
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """The results without image bytes (and with tuples as lists), ready for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items() if not isinstance(v, (bytes, bytearray))}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value if not isinstance(v, (bytes, bytearray))]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
