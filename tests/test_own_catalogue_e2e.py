"""A shop's own catalogue, end to end, through the commands a data scientist types (issue 9).

A small shop is made here: product photos (PNG and JPEG, several sizes) in three categories of its
own with a colour and a brand column, and purchase logs with timestamps. Then, each as its own
``couturier`` process: import-table -> validate -> train --dataset (tiny) -> export -> demo --dataset
(train, export, a real Triton, milvus-lite, the four services, every flow, the report). The dataset
folder's files must be byte-identical at the end.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from couturier.export.triton.environment import default_home

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATEGORIES = ("boots", "scarves", "handbags")
COLOURS = {"ruby": (190, 30, 45), "forest": (30, 110, 60), "ink": (30, 40, 110), "sand": (210, 180, 120)}
N_PRODUCTS, N_USERS, PURCHASES = 144, 60, 6


def _photo(category: str, rgb: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    """A product photo on white: the category's silhouette in its colour, at a random size and aspect."""
    w, h = int(rng.integers(70, 140)), int(rng.integers(70, 140))
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    jitter = lambda v: int(v * (1 + rng.uniform(-0.08, 0.08)))  # noqa: E731
    if category == "boots":
        draw.rectangle([jitter(w * 0.35), jitter(h * 0.1), jitter(w * 0.6), jitter(h * 0.8)], fill=rgb)
        draw.rectangle([jitter(w * 0.35), jitter(h * 0.65), jitter(w * 0.85), jitter(h * 0.85)], fill=rgb)
    elif category == "scarves":
        draw.rectangle([jitter(w * 0.1), jitter(h * 0.4), jitter(w * 0.9), jitter(h * 0.55)], fill=rgb)
        draw.rectangle([jitter(w * 0.6), jitter(h * 0.4), jitter(w * 0.72), jitter(h * 0.9)], fill=rgb)
    else:
        draw.ellipse([jitter(w * 0.3), jitter(h * 0.1), jitter(w * 0.7), jitter(h * 0.5)], outline=rgb, width=4)
        draw.rectangle([jitter(w * 0.15), jitter(h * 0.35), jitter(w * 0.85), jitter(h * 0.85)], fill=rgb)
    return image


def make_shop(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """products.csv (+ images/) and purchases.csv of a small shop; each shopper prefers one category and
    one colour, so the purchases carry a visual taste."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    colour_names = list(COLOURS)
    products = []
    for i in range(N_PRODUCTS):
        category, colour = CATEGORIES[i % len(CATEGORIES)], colour_names[(i // len(CATEGORIES)) % len(COLOURS)]
        name = f"images/sku-{i:04d}.{'png' if i % 2 else 'jpg'}"
        _photo(category, COLOURS[colour], rng).save(root / name)
        products.append(
            {"product_id": f"SKU-{i:04d}", "image": name, "category": category, "colour": colour, "brand": f"b{i % 5}"}
        )
    with (root / "products.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(products[0]))
        writer.writeheader()
        writer.writerows(products)
    rows = []
    for u in range(N_USERS):
        likes = (rng.integers(len(CATEGORIES)), colour_names[rng.integers(len(COLOURS))])
        liked = [p for p in products if p["category"] == CATEGORIES[likes[0]] or p["colour"] == likes[1]]
        for k, j in enumerate(rng.choice(len(liked), PURCHASES, replace=False)):
            rows.append(
                {
                    "user_id": f"cust-{u:03d}",
                    "product_id": liked[j]["product_id"],
                    "timestamp": 1_700_000_000 + 86_400 * k + u,
                }
            )
    with (root / "purchases.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["user_id", "product_id", "timestamp"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "products.csv", root / "purchases.csv"


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def couturier(*args: str | Path, cwd: Path, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    """``couturier ARGS`` as its own process in ``cwd`` (relative defaults land there); fails loudly."""
    env = {**os.environ, "COUTURIER_TRITON_HOME": str(default_home()), "COUTURIER_CACHE_DIR": str(cwd / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "couturier.services.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, (
        f"couturier {' '.join(map(str, args))} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done


def test_a_shops_catalogue_from_import_to_served_flows(tmp_path: Path) -> None:
    products, purchases = make_shop(tmp_path / "shop")
    work = tmp_path / "work"
    work.mkdir()
    dataset = work / "shop-data"
    couturier("data", "import-table", "--products", products, "--interactions", purchases, "--out", dataset, cwd=work)
    before = _checksums(dataset)
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert manifest["provenance"] == "real" and sorted(manifest["categories"]) == sorted(CATEGORIES)
    assert manifest["counts"]["products"] == N_PRODUCTS and manifest["counts"]["users"] == N_USERS
    assert "real" in couturier("data", "validate", dataset, cwd=work).stdout

    couturier("train", "--dataset", dataset, "--profile", "tiny", "--runs", "runs", cwd=work)
    record = json.loads((work / "runs" / "tiny" / "dataset.json").read_text())
    assert record["provenance"] == "real" and record["categories"] == manifest["categories"] and record["multimodal"]
    couturier("export", "--profile", "tiny", "--runs", "runs", "--repo", "repo", "--user-vectors", "uv", cwd=work)
    import onnx

    for model in ("generator", "pref_grad"):
        props = {p.key: p.value for p in onnx.load(work / "repo" / model / "1" / "model.onnx").metadata_props}
        assert json.loads(props["couturier.categories"]) == manifest["categories"], model

    couturier("demo", "--dataset", dataset, "--profile", "tiny", "--out", "report", cwd=work, timeout_s=1500)
    report = json.loads((work / "report" / "demo_report.json").read_text())
    assert not report.get("errors"), report.get("errors")
    data = report["data"]
    assert data["provenance"] == "real" and data["name"] == "shop-data" and "products.csv" in data["source"]
    assert sorted(data["categories"]) == sorted(CATEGORIES)
    html = (work / "report" / "demo_report.html").read_text()
    assert "REAL data" in html and "SIMULATED" not in html
    recommended = report["recommend"]["user"]["products"]
    assert len(recommended) == 10 and {p["category"] for p in recommended} <= set(CATEGORIES)
    designs = report["design"]["user"]
    assert designs["category"] in CATEGORIES and len(designs["designs"]) == 4
    assert all(d["preference_after"] > d["preference_before"] for d in designs["designs"])
    for example in report["search"]["examples"]:
        assert example["query"]["category"] in CATEGORIES and len(example["hits"]) == 8
    assert report["multimodal"]["queries"] and not report["multimodal"]["skipped"]
    assert _checksums(dataset) == before  # nothing a command did touched the dataset folder
