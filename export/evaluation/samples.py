"""Judge the trained conditional GAN's samples against the real held-out catalogue.

Writes ``runs/<profile>/judge/samples.json`` (the samples' figures, the real ceiling on the same
reference draws, and their FID ratio) and ``samples.png`` (a few samples per category, each
captioned with the judge's category and confidence: green when it is the requested category).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from couturier.export.evaluation.judge import JudgeReport, LabelledImages, judge_against_real, load_judge
from couturier.export.training.common import write_json

SAMPLES_JSON = "samples.json"
SAMPLES_PNG = "samples.png"
NOTE = (
    "FID here is the Fréchet distance in the judge's 128-d penultimate features (a CNN trained on the real "
    "catalogue), not Inception's; compare it only with the real ceiling (real held-out items against other real "
    "held-out items, same counts and reference draws). fid_ratio = generated / real-vs-real."
)


def gan_samples(run_dir: Path | str, n_per_category: int, seed: int = 0) -> LabelledImages:
    """``n_per_category`` samples of every category from the GAN trained in ``run_dir`` (seeded z)."""
    from couturier.export.training.common import tensor_to_images
    from couturier.export.training.train_gan import generate, load_gan

    generator, _ = load_gan(run_dir)
    categories = np.repeat(np.arange(generator.cfg.n_categories, dtype=np.int64), n_per_category)
    return LabelledImages(tensor_to_images(generate(generator, categories, seed=seed)), categories)


def judge_gan(
    runs_root: Path | str,
    reference: LabelledImages,
    *,
    n_per_category: int = 100,
    draws: int = 10,
    seed: int = 0,
    sheet_per_category: int = 8,
) -> tuple[JudgeReport, Path, Path]:
    """Judge the GAN of ``runs_root/gan`` with the judge of ``runs_root/judge``; write the JSON and PNG there."""
    root = Path(runs_root)
    judge = load_judge(root / "judge")
    gan_dir = root / "gan"
    if not (gan_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"no trained GAN in {gan_dir}")
    samples = gan_samples(gan_dir, n_per_category, seed=seed)
    n_categories = int(samples.categories.max()) + 1
    if n_categories != judge.config.n_categories:
        raise ValueError(f"the GAN draws {n_categories} categories, the judge knows {judge.config.n_categories}")
    report = judge_against_real(judge, samples.images, samples.categories, reference, draws=draws, seed=seed)
    judge_metrics = _read(root / "judge" / "metrics.json")
    gan_metrics = _read(gan_dir / "metrics.json")
    out = root / "judge"
    payload: dict[str, Any] = {
        "note": NOTE,
        "gan_run": str(gan_dir),
        "gan_steps": gan_metrics.get("steps_done"),
        "gan_train_wall_s": gan_metrics.get("train_wall_s"),
        "judge_heldout_accuracy": judge_metrics.get("heldout_accuracy"),
        "n_per_category": n_per_category,
        "n_reference": len(reference.categories),
        **report.to_dict(),
    }
    json_path = out / SAMPLES_JSON
    write_json(json_path, payload)
    probs = judge.probabilities(samples.images)
    png = contact_sheet(
        samples,
        probs,
        judge.config.category_names,
        out / SAMPLES_PNG,
        per_category=sheet_per_category,
        title=_sheet_title(report, gan_metrics.get("steps_done")),
    )
    return report, json_path, png


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _sheet_title(report: JudgeReport, steps: Any) -> str:
    overall, ceiling = report.generated.overall, report.ceiling.overall
    ratio = report.fid_ratio()["overall"]
    return (
        f"GAN samples ({steps} steps), one row per requested category, judged by a CNN trained on the real "
        f"catalogue:\naccuracy {overall.accuracy:.2f} (real held-out items {ceiling.accuracy:.2f}), judge-feature FID "
        f"{ratio:.1f}x real-vs-real. Caption: judged category and its probability (green = the requested one)."
    )


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def contact_sheet(
    samples: LabelledImages,
    probs: np.ndarray,
    names: Sequence[str],
    path: Path | str,
    *,
    per_category: int = 8,
    cell: int = 96,
    title: str = "",
) -> Path:
    """PNG: one row per requested category, its first ``per_category`` images, each captioned with
    the judge's category and probability (green when it is the requested one, red otherwise)."""
    label_w, caption_h, pad, line_h = 100, 16, 6, 16
    lines = title.splitlines()
    title_h = 8 + line_h * len(lines) + 4
    text_w = max((ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=_font(12)) for t in lines), default=0)
    width = max(label_w + per_category * (cell + pad) + pad, int(text_w) + 2 * pad)
    sheet = Image.new("RGB", (width, title_h + len(names) * (cell + caption_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for n, text in enumerate(lines):
        draw.text((pad, 8 + n * line_h), text, fill="black", font=_font(12))
    small = _font(11)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    for r, name in enumerate(names):
        y = title_h + r * (cell + caption_h + pad)
        draw.text((pad, y + cell // 2 - 6), name, fill="black", font=_font(13))
        for col, i in enumerate(np.flatnonzero(samples.categories == r)[:per_category]):
            x = label_w + col * (cell + pad)
            sheet.paste(Image.fromarray(samples.images[i]).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
            right = predicted[i] == r
            caption = f"{names[predicted[i]]} {confidence[i]:.2f}"
            draw.text((x + 2, y + cell + 1), caption, fill=(0, 120, 0) if right else (200, 0, 0), font=small)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def judge_summary_lines(report: JudgeReport) -> list[str]:
    """A plain-text table: per category and overall, the samples' and the real items' figures."""
    ratio = report.fid_ratio()
    rows = [*report.generated.per_category, "overall"]
    lines = [
        f"{'category':<10} {'acc':>5} {'real acc':>8} {'FID':>8} {'real FID':>8} {'ratio':>6} {'NN dist':>7} {'real NN':>7}"
    ]
    for name in rows:
        g = report.generated.overall if name == "overall" else report.generated.per_category[name]
        r = report.ceiling.overall if name == "overall" else report.ceiling.per_category[name]
        lines.append(
            f"{name:<10} {g.accuracy:>5.2f} {r.accuracy:>8.2f} {g.fid:>8.3f} {r.fid:>8.3f} {ratio[name]:>6.1f} "
            f"{g.nearest_real:>7.3f} {r.nearest_real:>7.3f}"
        )
    return lines
