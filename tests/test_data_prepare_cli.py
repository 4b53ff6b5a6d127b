"""prepare/load_prepared (the simulated world as a dataset folder), reports and the `couturier data` sub-app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from couturier.export.data.cli import data_app
from couturier.export.data.dataset import PROFILES, Profile, load_prepared, prepare
from couturier.export.data.dataset_folder import NotADatasetError, dataset_fingerprint
from couturier.export.data.errors import DataError, NotPreparedError
from couturier.export.data.report import SHEET_TITLE, write_contact_sheet, write_stats

TINY = Profile("tiny", items_per_class=40, heldout_per_class=10, n_users=120, image_size=32, seed=0)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    prepare(folder, TINY, progress=False)
    return folder


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    return app


def test_profiles() -> None:
    assert PROFILES["demo"].items_per_class == 1000 and PROFILES["demo"].heldout_per_class == 100
    assert PROFILES["demo"].n_users == 2000
    assert PROFILES["full"].items_per_class is None and PROFILES["full"].heldout_per_class is None


def test_prepare_writes_and_is_idempotent(prepared_dir: Path) -> None:
    data = load_prepared(prepared_dir)
    assert len(data.catalogue) == 400 and len(data.heldout) == 100
    assert data.interactions is not None and data.oracle is not None and data.profile == TINY
    assert data.interactions.n_users == 120 and data.interactions.n_items == 400
    assert (prepared_dir / "oracle.npz").is_file() and (prepared_dir / "images_32.u8").is_file()
    manifest = json.loads((prepared_dir / "dataset.json").read_text())
    assert manifest["provenance"] == "simulated" and manifest["simulation"]["profile"]["items_per_class"] == 40
    assert "Fashion-MNIST" in manifest["source"] and manifest["importer"] == "couturier data prepare --profile tiny"
    assert set(manifest["attributes"]) == {"colour", "garment"} and data.categories[4] == "shoes"
    # the simulated labels training and the judge need stay filled
    assert (data.catalogue.fm_class >= 0).all() and (data.catalogue.colour >= 0).all()
    assert (data.heldout.fm_class >= 0).all() and data.catalogue.colour_names[0] == "black"
    stamps = {p.name: p.stat().st_mtime_ns for p in prepared_dir.iterdir()}
    again = prepare(prepared_dir, TINY, progress=False)  # same parameters: opened, not rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in prepared_dir.iterdir()} == stamps
    assert np.array_equal(again.catalogue.images, data.catalogue.images)
    assert all(np.array_equal(a, b) for a, b in zip(again.interactions.train, data.interactions.train))
    # test/validation items are catalogue rows; the held-out catalogue comes from the test split
    assert data.interactions.test.max() < len(data.catalogue)
    assert str(data.heldout.product_ids[0]).startswith("fm-test-")


def test_prepare_rebuilds_on_new_parameters(tmp_path: Path) -> None:
    small = Profile("x", items_per_class=30, heldout_per_class=5, n_users=50)
    first = prepare(tmp_path, small, progress=False)
    assert first.interactions is not None and first.interactions.n_users == 50
    other = prepare(tmp_path, Profile("x", items_per_class=30, heldout_per_class=5, n_users=60), progress=False)
    again = load_prepared(tmp_path).interactions
    assert other.interactions is not None and again is not None
    assert again.n_users == 60 == other.interactions.n_users
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))  # no partial or old folder left beside it


def test_prepare_is_deterministic(prepared_dir: Path, tmp_path: Path) -> None:
    """The same profile gives byte-identical files, so the same fingerprint (models record it)."""
    prepare(tmp_path / "again", TINY, progress=False)
    assert dataset_fingerprint(tmp_path / "again") == dataset_fingerprint(prepared_dir)


def test_load_prepared_errors(tmp_path: Path, prepared_dir: Path) -> None:
    with pytest.raises(NotPreparedError, match="couturier data prepare") as err:
        load_prepared(tmp_path / "empty")
    assert isinstance(err.value, NotADatasetError) and "couturier data import-table" in str(err.value)
    assert not (tmp_path / "empty").exists()
    with pytest.raises(DataError, match="unknown data profile 'huge'"):
        prepare(tmp_path, "huge")


def test_stats_and_contact_sheet(prepared_dir: Path, tmp_path: Path) -> None:
    js, md = write_stats(prepared_dir, tmp_path)
    stats = json.loads(js.read_text())
    inter = stats["interactions"]
    assert inter["n_users"] == 120 and inter["split_sizes"]["validation"] == 120
    assert inter["split_sizes"]["train"] + 240 == inter["n_interactions"]
    assert inter["cold_items (no train interaction)"] > 0
    assert stats["dataset"]["provenance"] == "simulated" and "Fashion-MNIST" in stats["provenance"]["real"]
    assert sum(stats["catalogue"]["items_per_category"].values()) == 400
    assert stats["catalogue"]["items_per_category"]["shoes"] == 120
    assert sum(stats["catalogue"]["items_per_attribute"]["colour"].values()) == 400
    assert stats["heldout"]["items_per_attribute"]["garment"]["Bag"] == 10
    text = md.read_text()
    assert "Simulated" in text and "Real" in text and "SIMULATED shoppers" in text and "simulated-tiny" in text
    png = write_contact_sheet(load_prepared(prepared_dir).catalogue, tmp_path / "sheet.png")
    with Image.open(png) as img:
        assert img.mode == "RGB" and img.width > 600 and img.height > 500
    assert "SIMULATED colours" in SHEET_TITLE and "Fashion-MNIST" in SHEET_TITLE


def test_cli_commands(prepared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    app = _cli()
    result = runner.invoke(app, ["data", "stats", "--data-dir", str(prepared_dir), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "data_stats.md").is_file()
    result = runner.invoke(app, ["data", "sheet", "--data-dir", str(prepared_dir), "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0 and (tmp_path / "s.png").is_file()
    # DataError -> non-zero exit, clear message, no traceback
    result = runner.invoke(app, ["data", "stats", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "couturier data prepare" in result.output
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(result.exception, SystemExit)
    monkeypatch.setenv("COUTURIER_FASHION_MNIST_DIR", str(tmp_path / "no-fm"))
    result = runner.invoke(app, ["data", "prepare", "--data-dir", str(tmp_path / "p"), "--no-progress"])
    assert result.exit_code == 2 and "apt-get install dataset-fashion-mnist" in result.output
    result = runner.invoke(app, ["data", "prepare", "--data-dir", str(tmp_path / "p"), "--profile", "huge"])
    assert result.exit_code == 2 and "unknown data profile" in result.output


@pytest.mark.integration  # the full demo data set (10,000 items, 2,000 shoppers)
def test_cli_prepare_demo_profile(tmp_path: Path) -> None:
    """The default demo profile end to end (about 7 s on 2 cores)."""
    result = CliRunner().invoke(_cli(), ["data", "prepare", "--data-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    data = load_prepared(tmp_path)
    assert len(data.catalogue) == 10_000 and len(data.heldout) == 1_000
    assert np.bincount(data.catalogue.fm_class).tolist() == [1000] * 10
    assert data.interactions.n_users == 2000 and len(data.interactions.cold_items()) > 1000


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--profile", "tiny"],
        ["eval", "--profile", "tiny"],
        ["judge", "train", "--profile", "tiny"],
        ["demo", "--profile", "tiny"],
    ],
)
def test_a_folder_that_is_not_a_dataset_is_refused_and_nothing_is_written(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--dataset` on a folder of something else: exit 2 naming the folder; no runs, no cache, no file in it."""
    from couturier.export.tools.cli import register

    app = typer.Typer()
    register(app)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "holiday-photos"
    folder.mkdir()
    (folder / "beach.jpg").write_bytes(b"not ours")
    result = CliRunner().invoke(
        app,
        [*command, "--dataset", str(folder), "--runs", "runs"]
        if command[0] != "demo"
        else [*command, "--dataset", str(folder)],
    )
    assert result.exit_code == 2, result.output
    assert str(folder) in result.output and "dataset" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday-photos"]
    assert [p.name for p in folder.iterdir()] == ["beach.jpg"]
