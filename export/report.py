"""The evaluation report: every figure comes from the metrics files the trainers and exporter wrote.

Writes ``<runs>/report/eval_report.md``, ``eval_report.html`` (images inline) and
``eval_report.json``. A missing stage is reported as missing, never filled in.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

DATA_NOTE = (
    "Images are REAL Fashion-MNIST garments; their colours, the shoppers and all purchases are "
    "SIMULATED (planted tastes). The 'oracle' rows use the planted tastes and exist only as an upper "
    "reference; no model saw them in training."
)


def data_note(record: dict[str, Any] | None) -> str:
    """What the run was trained on, from its ``dataset.json`` record (:func:`couturier.export.pipeline.describe_dataset`)."""
    if not record or record.get("provenance", "simulated") == "simulated":
        return DATA_NOTE
    return (
        f"REAL data: the dataset {record.get('name')!r} ({record.get('source')}), {record.get('products')} products, "
        f"{record.get('users')} users, categories {', '.join(record.get('categories', []))}. There is no planted "
        "taste on real data: no oracle rows."
    )


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def _recommender(metrics: dict[str, Any]) -> list[str]:
    keys = ["sampled_auc", "full_auc", "sampled_auc_cold", "full_auc_cold"]
    order = ["dvbpr", "bpr_mf", "popularity", "oracle_simulated"]
    rows = [
        [name, *(metrics["test_auc"][name].get(key, "n/a") for key in keys)]
        for name in order
        if name in metrics["test_auc"]
    ]
    first = metrics["test_auc"][order[0]]
    lines = [
        f"Test item of each of {first['n_users']} users vs {first['n_negatives']} sampled negatives "
        f"(sampled AUC, DVBPR's protocol) and vs all non-purchased items (full AUC); 'cold' = the "
        f"{first['n_cold_users']} users whose test item has no training purchase.",
        "",
        *_table(["scorer", "sampled AUC", "full AUC", "sampled AUC (cold)", "full AUC (cold)"], rows),
        "",
        f"DVBPR trained {metrics.get('train_wall_s', 'n/a')} s, best epoch {metrics.get('best_epoch')} "
        f"(stopped by time cap: {metrics.get('stopped_by_max_seconds')}).",
    ]
    agreement = metrics.get("oracle_agreement_simulated")
    if agreement:
        lines += [
            "",
            "Agreement with the planted tastes (simulated; per-user Spearman over random items):",
            "",
            *_table(
                ["scorer", "Spearman", "pair concordance"],
                [[k, v["spearman_mean"], v["pairwise_concordance"]] for k, v in agreement.items()],
            ),
        ]
    return lines


def _retrieval(metrics: dict[str, Any]) -> list[str]:
    methods = metrics["methods"]
    labels = list(next(iter(methods.values()))["precision"]) if methods else []
    rows = [
        [
            name,
            method["dim"],
            method["precision"]["category"]["p@1"],
            *(method["precision"].get(label, {}).get("p@10", "n/a") for label in labels),
            method["search_ms_per_query_median"],
            method["encode_ms_per_image_median"],
        ]
        for name, method in methods.items()
    ]
    return [
        f"{metrics['n_queries']} queries ({metrics.get('queries', 'held-out items')}) against "
        f"{metrics['n_catalogue']} catalogue items; precision@k = share of the k nearest (cosine) with the "
        "query's label.",
        "",
        *_table(
            [
                "method",
                "dim",
                "category P@1",
                *(f"{label} P@10" for label in labels),
                "search ms/query (median)",
                "encode ms/image (median)",
            ],
            rows,
        ),
    ]


def _multimodal(metrics: dict[str, Any]) -> list[str]:
    recall = metrics.get("recall", {})
    rows = [[method, *(values.get(k, "n/a") for k in ("R@10", "R@50"))] for method, values in recall.items()]
    return [
        "Recall@K of the target product for held-out (reference image, text change) pairs; the text is "
        "templated from the dataset's labels (on the simulated world: simulated colours, real garment classes).",
        "",
        *_table(["query", "Recall@10", "Recall@50"], rows),
    ]


def _gan(metrics: dict[str, Any]) -> list[str]:
    consistency = metrics["category_consistency_1nn"]
    rows = [[name, consistency[f"category_{index}"]] for index, name in enumerate(metrics["category_names"])]
    rows.append(["overall", consistency["overall"]])
    final = metrics.get("final", {})
    return [
        f"Conditional hinge GAN, {metrics.get('steps_done')} steps in {metrics.get('train_wall_s')} s; mean D output "
        f"{final.get('d_real', float('nan')):.2f} on real images, {final.get('d_fake', float('nan')):.2f} on samples. "
        "Category consistency = share of samples whose nearest real catalogue image (pixels) has the "
        "requested category. Samples per category: see the pictures below.",
        "",
        *_table(["category", "1-NN category consistency"], rows),
    ]


#: Issue 10's acceptance floors: key in the ``judge`` object -> (comparison, floor). ``retrieval`` compares
#: with the pixel baseline of the same run instead of a constant.
FLOORS: dict[str, tuple[str, float]] = {
    "samples.category_accuracy": (">=", 0.85),
    "samples.fid_ratio": ("<=", 5.0),
    "designs.preference_raised_share": (">=", 0.9),
    "designs.category_accuracy": (">=", 0.8),
    "designs.oracle_top10_share": (">=", 0.6),
    "alter.reconstruction_category_accuracy": (">=", 0.8),
    "alter.altered_category_accuracy": (">=", 0.8),
    "alter.oracle_gain_share": (">=", 0.7),
    "gigs.positive_shift_share": (">=", 0.9),
    "gigs.variant_category_accuracy": (">=", 1.0),
    "gigs.min_pairwise_opposite_ssim": (">=", 0.05),
}
_SCALARS = (int, float)


def judge_summary(root: Path) -> dict[str, Any] | None:
    """The ``judge`` object of the report: the judge's figures for samples, designs, alterations, GIGS
    variants and retrieval, each a number, plus ``floors`` (value, floor, met) for every acceptance floor."""
    samples = _load(root / "judge" / "samples.json")
    generation = _load(root / "judge" / "generation.json")
    retrieval = _load(root / "retrieval" / "metrics.json")
    if samples is None and generation is None:
        return None
    out: dict[str, Any] = {}
    if samples is not None:
        out["samples"] = {
            "category_accuracy": samples["generated"]["overall"]["accuracy"],
            "fid_ratio": samples["fid_ratio"]["overall"],
            "real_category_accuracy": samples["real_ceiling"]["overall"]["accuracy"],
            "judge_heldout_accuracy": samples.get("judge_heldout_accuracy"),
            "per_category_accuracy": {k: v["accuracy"] for k, v in samples["generated"]["per_category"].items()},
            "per_category_fid_ratio": {k: v for k, v in samples["fid_ratio"].items() if k != "overall"},
        }
    if generation is not None:
        for flow in ("designs", "alter", "gigs"):
            out[flow] = dict(generation[flow])
    if retrieval is not None:
        methods = retrieval["methods"]
        out["retrieval"] = {
            f"{short}_p10_category": methods[name]["precision"]["category"]["p@10"]
            for short, name in (("infogan", "infogan_d"), ("pixels", "pixels"))
            if name in methods
        }
    floors: dict[str, Any] = {}
    for key, (op, floor) in FLOORS.items():
        flow, name = key.split(".")
        value = out.get(flow, {}).get(name)
        if isinstance(value, _SCALARS):
            floors[key] = {
                "value": value,
                "floor": f"{op} {floor}",
                "met": value >= floor if op == ">=" else value <= floor,
            }
    r = out.get("retrieval", {})
    if {"infogan_p10_category", "pixels_p10_category"} <= set(r):
        floors["retrieval.infogan_p10_category"] = {
            "value": r["infogan_p10_category"],
            "floor": f">= pixels {r['pixels_p10_category']:.3f}",
            "met": r["infogan_p10_category"] >= r["pixels_p10_category"],
        }
    out["floors"] = floors
    return out


def _judge(summary: dict[str, Any]) -> list[str]:
    lines = [
        "A CNN trained on the REAL catalogue images (never used by any optimisation) judges every generated "
        "image: category accuracy, and the Fréchet distance in its features against real held-out items of "
        "the same category divided by the real-vs-real distance (fid_ratio; 1 = as close as real items). "
        "Oracle figures use the SIMULATED planted tastes. Design/Alter/GIGS run with the latent service's "
        "optimisers at their defaults on the exported models.",
        "",
    ]
    rows = [[key, f["value"], f["floor"], "yes" if f["met"] else "NO"] for key, f in summary.get("floors", {}).items()]
    lines += _table(["figure", "value", "floor", "met"], rows)
    extra = []
    for flow in ("designs", "alter", "gigs"):
        for key, value in summary.get(flow, {}).items():
            if isinstance(value, _SCALARS) and f"{flow}.{key}" not in FLOORS:
                extra.append([f"{flow}.{key}", value])
    if extra:
        lines += ["", *_table(["more figures", "value"], extra)]
    return lines


def _parity(parity: dict[str, Any]) -> list[str]:
    rows = []
    for name, report in parity.items():
        detail = {k: v for k, v in report.items() if k != "ok"}
        rows.append([name, "yes" if report.get("ok") else "NO", json.dumps(detail, default=float)[:160]])
    return _table(["model", "parity ok", "detail"], rows)


def write_report(runs_root: Path) -> Path:
    """Collect the run's metrics into markdown + HTML + JSON; returns the markdown path."""
    root = Path(runs_root)
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    sources = {
        "dvbpr": _load(root / "dvbpr" / "metrics.json"),
        "gan": _load(root / "gan" / "metrics.json"),
        "retrieval": _load(root / "retrieval" / "metrics.json"),
        "synthtriplet": _load(root / "synthtriplet" / "metrics.json"),
        "parity": _load(root / "onnx" / "parity.json"),
        "training": _load(root / "training_summary.json"),
        "dataset": _load(root / "dataset.json"),
    }
    sections: list[tuple[str, list[str]]] = []

    def section(title: str, key: str, render: Any) -> None:
        data = sources[key]
        sections.append((title, render(data) if data is not None else [f"**Not run**: no {key} metrics under {root}."]))

    section("Recommendation: DVBPR vs popularity and BPR-MF", "dvbpr", _recommender)
    section(
        "Image retrieval: InfoGAN discriminator features vs raw pixels and EfficientNet-Lite0", "retrieval", _retrieval
    )
    section("Multimodal search (SynthTriplet) vs image-only", "synthtriplet", _multimodal)
    section("Design generator: conditional GAN", "gan", _gan)
    judge = judge_summary(root)
    sections.append(
        (
            "Generated images judged: samples, designs, alterations, GIGS variants",
            _judge(judge) if judge is not None else [f"**Not run**: no judge figures under {root / 'judge'}."],
        )
    )
    section("ONNX exports: parity with PyTorch (forward) and float64 autograd (gradients)", "parity", _parity)
    images = []
    for network, picture in (("gan", "samples.png"), ("infogan", "samples.png"), ("synthtriplet", "samples.png")):
        for name in (picture, "curves.png"):
            source = root / network / name
            if source.is_file():
                target = out / f"{network}_{name}"
                shutil.copyfile(source, target)
                images.append((f"{network} {name.removesuffix('.png')}", target.name))
    for name in ("samples.png", "designs.png", "alter.png", "gigs.png"):
        source = root / "judge" / name
        if source.is_file():
            target = out / f"judge_{name}"
            shutil.copyfile(source, target)
            images.append((f"judged {name.removesuffix('.png')}", target.name))
    if sources["training"] is not None:
        sections.append(("Training wall time (s)", [json.dumps(sources["training"]["wall_s"])]))

    note = data_note(sources["dataset"])
    md = ["# couturier evaluation report", "", note, ""]
    for title, lines in sections:
        md += [f"## {title}", "", *lines, ""]
    md += ["## Pictures", ""] + [f"![{title}]({name})" for title, name in images]
    markdown = out / "eval_report.md"
    markdown.write_text("\n".join(md) + "\n")
    (out / "eval_report.json").write_text(json.dumps({**sources, "judge": judge}, indent=2, default=float))
    (out / "eval_report.html").write_text(_html(sections, images, note))
    return markdown


def _html(sections: list[tuple[str, list[str]]], images: list[tuple[str, str]], note: str = DATA_NOTE) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>couturier evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}</style>",
        "<h1>couturier evaluation report</h1>",
        f"<p>{html.escape(note)}</p>",
    ]
    for title, lines in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        rows = [line for line in lines if line.startswith("|") and not line.startswith("|---")]
        text = [line for line in lines if line and not line.startswith("|")]
        parts += [f"<p>{html.escape(line)}</p>" for line in text]
        if rows:
            parts.append("<table>")
            for index, row in enumerate(rows):
                tag = "th" if index == 0 else "td"
                cells = [cell.strip() for cell in row.strip("|").split("|")]
                parts.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            parts.append("</table>")
    parts.append("<h2>Pictures</h2>")
    parts += [f"<h3>{html.escape(title)}</h3><img src='{html.escape(name)}'>" for title, name in images]
    return "\n".join(parts)
