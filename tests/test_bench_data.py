"""``couturier bench data``: the generated shop, the step-rate arithmetic, the ``bench`` command group
(the service benchmark unchanged), and the whole command on a tiny shop."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from couturier.export.tools.bench_data import CATEGORIES, COLOURS, _step_rate, generate_shop


def test_generated_shop_is_photos_and_prefix_tables(tmp_path: Path) -> None:
    shop = generate_shop(tmp_path / "shop", 60, (30, 60), seed=3, workers=1, echo=lambda _: None)
    assert not shop.reused and shop.image_bytes > 0
    with (tmp_path / "shop" / "products_60.csv").open() as fh:
        products = list(csv.DictReader(fh))
    with (tmp_path / "shop" / "products_30.csv").open() as fh:
        small = list(csv.DictReader(fh))
    assert len(products) == 60 and small == products[:30]  # the small catalogue is the large one's prefix
    assert {p["category"] for p in products} <= set(CATEGORIES) and {p["colour"] for p in products} <= set(COLOURS)
    sides = set()
    for p in products[:10]:
        with Image.open(tmp_path / "shop" / p["image"]) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert 128 <= img.width <= 256 and 128 <= img.height <= 256
            sides.add(img.size)
            assert img.getpixel((0, 0))[0] > 200  # white background
    assert len(sides) > 1
    with (tmp_path / "shop" / "interactions_30.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    users = {r["user_id"] for r in rows}
    assert len(users) == 3 and all(sum(r["user_id"] == u for r in rows) >= 3 for u in users)
    assert {r["product_id"] for r in rows} <= {p["product_id"] for p in small}
    again = generate_shop(tmp_path / "shop", 60, (30, 60), seed=3, workers=1, echo=lambda _: None)
    assert again.reused and again.image_bytes == shop.image_bytes
    assert not generate_shop(tmp_path / "shop", 60, (60,), seed=4, workers=1, echo=lambda _: None).reused


def test_step_rate_leaves_out_the_warm_up_and_counts_a_partial_batch() -> None:
    stamps = [0.0, 5.0, 6.0, 7.0, 7.5]  # a slow first step, two full steps, a half batch
    rate = _step_rate(stamps, lambda k: 100 if k < 3 else 50, warmup=1)
    assert rate["steps"] == 4 and rate["steps_measured"] == 3
    assert rate["images_per_s"] == pytest.approx(250 / 2.5)
    short = _step_rate([0.0, 2.0], lambda k: 10, warmup=3)  # too few steps: all of them
    assert short["steps_measured"] == 1 and short["images_per_s"] == 5.0


def test_bench_is_a_group_whose_plain_form_is_the_service_benchmark() -> None:
    import typer

    from couturier.export.tools.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "--concurrency" in result.output and "data" in result.output
    result = runner.invoke(app, ["bench", "--concurrency", "x"])  # the service benchmark's own validation ran
    assert result.exit_code == 2 and "--concurrency must be comma-separated integers" in result.output
    result = runner.invoke(app, ["bench", "data", "--help"])
    assert result.exit_code == 0 and "--dvbpr-seconds" in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_bench_data_end_to_end_on_a_tiny_shop(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "couturier.services.cli", "bench", "data", "--n", "300", "--sizes", "150,300"]
    command += ["--out", str(out), "--work", str(tmp_path / "work"), "--image-size", "32"]
    command += ["--dvbpr-seconds", "3", "--gan-steps", "3", "--no-gan-finish"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "bench_data.json").read_text())
    assert {"settings", "machine", "generation", "import", "open", "training", "targets", "notes"} <= set(report)
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["cpu_model"]
    assert report["generation"]["products"] == 300 and not report["generation"]["reused"]
    for size in ("150", "300"):
        imported = report["import"][size]
        assert imported["images"] == int(size)
        for key in ("wall_s", "images_per_s", "peak_rss_bytes", "child_processes_peak_rss_max_bytes", "cores_used"):
            assert imported[key] > 0, (size, key)
        assert report["open"][size]["catalogue_images"] > 0
        for network in ("dvbpr", "gan"):
            trained = report["training"][network][size]
            keys = (
                "steps",
                "images_per_s",
                "peak_rss_bytes",
                "sampled_peak_rss_anon_bytes",
                "store_bytes",
                "cores_used",
            )
            for key in (*keys, "sampled_peak_rss_steps_bytes"):
                assert trained[key] > 0, (network, size, key)
    targets = report["targets"]
    for name in ("import_images_per_s", "training_peak_rss", "training_rss_independent_of_catalogue"):
        assert isinstance(targets[name]["met"], bool), name
    assert all(
        isinstance(v["met"], bool) for v in targets["training_rss_independent_of_catalogue"]["per_network"].values()
    )
    text = (out / "bench_data.md").read_text()
    assert "## Targets" in text and "share these cores" in text and "| gan | 300 |" in text
