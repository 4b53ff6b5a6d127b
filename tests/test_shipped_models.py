"""Shipped models (export/tools/shipped.py): ship -> verify -> install, and every refusal.

Fast: fake run folders of small torch dicts and a tiny simulated dataset folder; no network is trained or
loaded (``verify_loaders=False``: the loaders need real architectures, which ``couturier models ship``
checks on the real run).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from couturier.export.data.catalogue import CATEGORIES, COLOUR_ATTRIBUTE, COLOUR_NAMES, GARMENT_ATTRIBUTE
from couturier.export.data.dataset import Profile
from couturier.export.data.dataset_folder import PRODUCTS_FILE, dataset_fingerprint, validate_dataset
from couturier.export.data.dataset_writer import DatasetWriter
from couturier.export.data.fashion_mnist import FM_CLASSES
from couturier.export.data.shoppers import Oracle
from couturier.export.data.stored import read_npz
from couturier.export.pipeline import NETWORKS, USER_VECTORS
from couturier.export.tools import shipped as shipped_module
from couturier.export.tools.cli import register
from couturier.export.tools.demo import Locations, plan_models, training_reasons
from couturier.export.tools.shipped import (
    CHECKPOINT,
    INSTALLED_MARKER,
    MANIFEST,
    MODEL_CARD,
    SUMS,
    DataMismatchError,
    NothingShippedError,
    RunConflictError,
    ShippedIntegrityError,
    SizeLimitError,
    install,
    run_differences,
    ship,
    verify,
)

PROFILE = "quality"
USERS = np.array([f"sim-user-{n:05d}" for n in range(4)])
SIZE = 8  # image side of the fake data (DatasetWriter's minimum)
PRODUCTS = ("a", "b", "c")
TINY = Profile("demo", items_per_class=1, heldout_per_class=1, n_users=4, image_size=SIZE)


def _write_data(folder: Path, *, pixel: int = 7, users: np.ndarray = USERS, real: bool = False) -> Path:
    """A tiny dataset folder: the simulated world as ``couturier data prepare`` writes it (queries, oracle,
    the manifest's ``simulation`` entry), or with ``real`` a real dataset of the same products."""
    with DatasetWriter(
        folder,
        image_size=SIZE,
        categories=CATEGORIES,
        attribute_values={COLOUR_ATTRIBUTE: COLOUR_NAMES, GARMENT_ATTRIBUTE: FM_CLASSES},
    ) as writer:
        for i, product in enumerate(PRODUCTS):
            image = np.full((SIZE, SIZE, 3), pixel, dtype=np.uint8)
            attributes = {COLOUR_ATTRIBUTE: COLOUR_NAMES[i], GARMENT_ATTRIBUTE: FM_CLASSES[i]}
            writer.add_product(product, CATEGORIES[i], image, attributes)
        writer.add_query("q", CATEGORIES[0], np.zeros((SIZE, SIZE, 3), np.uint8), {COLOUR_ATTRIBUTE: COLOUR_NAMES[0]})
        # every shopper bought the three products: train, validation, test
        writer.set_interactions(
            np.repeat(users, len(PRODUCTS)), list(PRODUCTS) * len(users), split=np.tile([0, 1, 2], len(users))
        )
        if real:
            writer.finish(name="shop", source="a test shop", provenance="real", importer="pytest", contact_sheet=False)
            return folder
        n, k, d = len(users), len(COLOUR_NAMES), 2
        oracle = Oracle(
            category_weights=np.full((n, len(CATEGORIES)), 1 / len(CATEGORIES)),
            colour_prefs=np.zeros((n, k)),
            style_dirs=np.ones((n, d)) / np.sqrt(d),
            style_mean=np.zeros((len(CATEGORIES), d)),
            style_std=np.ones((len(CATEGORIES), d)),
        )
        writer.finish(
            name="simulated-demo",
            source="test",
            provenance="simulated",
            importer="couturier data prepare --profile demo",
            oracle=oracle,
            simulation={"profile": asdict(TINY), "fashion_mnist_sha256": {"train-images-idx3-ubyte.gz": "ab" * 32}},
            contact_sheet=False,
        )
    return folder


def _write_run(runs_root: Path, profile: str = PROFILE) -> Path:
    """A trained run's files with small tensors; synthtriplet has a critic for the trim to drop."""
    run = runs_root / profile
    tensors = {"w": torch.arange(6, dtype=torch.float32)}
    payloads = {
        "dvbpr": {"config": {"k": 2}, "state_dict": tensors},
        "gan": {"architecture": "x", "config": {}, "generator": tensors, "discriminator": tensors},
        "infogan": {"config": {}, "generator": tensors, "discriminator": tensors},
        "synthtriplet": {"config": {}, "generator": tensors, "critic": {"c": torch.ones(50)}, "infogan_run_dir": "x"},
        "judge": {"config": {}, "state_dict": tensors},
    }
    for network, payload in payloads.items():
        (run / network).mkdir(parents=True)
        torch.save(payload, run / network / CHECKPOINT)
        unit = "epochs" if network in ("dvbpr", "judge") else "steps"
        metrics = {
            "profile": {"name": profile, "seed": 0, unit: 100},
            f"{unit}_done": 100,
            "train_wall_s": 12.5,
            "stopped_by_max_seconds": False,
            "device": "cuda",
        }
        (run / network / "metrics.json").write_text(json.dumps(metrics))
        (run / network / "curves.png").write_bytes(b"not shipped")
    np.savez(run / USER_VECTORS, user_ids=USERS, theta=np.ones((4, 2), np.float32))
    return run


@pytest.fixture
def shipment(tmp_path: Path) -> tuple[Path, Path]:
    """(shipped folder, simulated dataset folder) from a fake run."""
    data = _write_data(tmp_path / "data")
    _write_run(tmp_path / "trained")
    dest = ship(
        tmp_path / "trained", PROFILE, tmp_path / "shipped" / PROFILE, prepared_data_dir=data, verify_loaders=False
    )
    return dest, data


def _flip_byte(path: Path, at: int = 10) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


# --- ship -> verify -> install ------------------------------------------------------------------------------


def test_ship_verify_install_round_trip(shipment: tuple[Path, Path], tmp_path: Path) -> None:
    dest, data = shipment
    manifest = json.loads((dest / MANIFEST).read_text())
    shipped_paths = {entry["path"] for entry in manifest["files"]}
    expected = {f"{net}/{name}" for net in (*NETWORKS, "judge") for name in (CHECKPOINT, "metrics.json")}
    assert shipped_paths == expected | {USER_VECTORS}
    assert not (dest / "gan" / "curves.png").exists()
    for entry in manifest["files"]:
        assert (dest / entry["path"]).stat().st_size == entry["bytes"]
    sums = dict(reversed(line.split("  ", 1)) for line in (dest / SUMS).read_text().splitlines())
    assert set(sums) == shipped_paths | {MANIFEST, MODEL_CARD}
    # trimmed: the critic is gone, the generator the loader reads is intact
    trimmed = torch.load(dest / "synthtriplet" / CHECKPOINT, weights_only=False)
    assert "critic" not in trimmed and torch.equal(trimmed["generator"]["w"], torch.arange(6, dtype=torch.float32))
    assert manifest["networks"]["synthtriplet"]["dropped_checkpoint_entries"] == ["critic"]
    assert manifest["networks"]["gan"]["done"] == 100 and manifest["networks"]["dvbpr"]["unit"] == "epochs"
    assert manifest["train_wall_s"]["infogan"] == 12.5 and manifest["seed"] == 0
    assert manifest["device"]["torch"]["gan"] == "cuda"
    assert manifest["data"]["data_profile"]["name"] == "demo"
    assert manifest["data"]["tables"]["interactions_simulated"]["n_users"] == 4
    assert manifest["data"]["tables"]["catalogue"]["n_items"] == len(PRODUCTS)
    assert manifest["data"]["data_profile"] == asdict(TINY)
    assert set(manifest["data"]["tables"]["catalogue"]) == {"content_sha256", "n_items"}
    card = (dest / MODEL_CARD).read_text()
    for text in (
        "SIMULATED",
        "Fashion-MNIST",
        "couturier data prepare --profile demo",
        "couturier train --profile quality",
        "couturier judge train --profile quality",
    ):
        assert text in card

    assert verify(dest)["profile"] == PROFILE
    runs = tmp_path / "runs"
    run_dir = install(dest, runs, data)
    assert run_dir == runs / PROFILE
    for path in shipped_paths:
        assert (run_dir / path).read_bytes() == (dest / path).read_bytes()
    assert training_reasons(run_dir) == []
    assert json.loads((run_dir / INSTALLED_MARKER).read_text())["profile"] == PROFILE
    notes: list[str] = []
    assert install(dest, runs, data, echo=notes.append) == run_dir  # again: nothing to copy
    assert notes == [
        f"installed 0 of {len(shipped_paths)} shipped files into {run_dir} ({len(shipped_paths)} were already there)"
    ]


def test_shipping_again_replaces_the_previous_shipment(shipment: tuple[Path, Path], tmp_path: Path) -> None:
    dest, data = shipment
    (dest / "stale.bin").write_bytes(b"left over")
    ship(tmp_path / "trained", PROFILE, dest, prepared_data_dir=data, verify_loaders=False)
    assert not (dest / "stale.bin").exists()
    verify(dest)


# --- refusals ------------------------------------------------------------------------------------------------


def test_a_flipped_byte_fails_verify_and_install_naming_the_file(shipment: tuple[Path, Path], tmp_path: Path) -> None:
    dest, data = shipment
    _flip_byte(dest / "gan" / CHECKPOINT)
    with pytest.raises(ShippedIntegrityError, match=r"gan/checkpoint\.pt changed"):
        verify(dest)
    with pytest.raises(ShippedIntegrityError, match=r"gan/checkpoint\.pt"):
        install(dest, tmp_path / "runs", data)
    assert not (tmp_path / "runs").exists()  # nothing copied


def test_verify_names_missing_and_unlisted_files_and_a_manifest_that_disagrees(shipment: tuple[Path, Path]) -> None:
    dest, _ = shipment
    (dest / "user_vectors.npz").rename(dest / "extra.npz")
    with pytest.raises(ShippedIntegrityError) as caught:
        verify(dest)
    assert "user_vectors.npz is missing" in str(caught.value)
    assert "extra.npz is not listed" in str(caught.value)
    (dest / "extra.npz").rename(dest / "user_vectors.npz")
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["files"] = [entry for entry in manifest["files"] if entry["path"] != "judge/checkpoint.pt"]
    (dest / MANIFEST).write_text(json.dumps(manifest))
    lines = [line for line in (dest / SUMS).read_text().splitlines() if not line.endswith(MANIFEST)]
    (dest / SUMS).write_text("\n".join([*lines, f"{shipped_module.sha256_file(dest / MANIFEST)}  {MANIFEST}"]) + "\n")
    with pytest.raises(ShippedIntegrityError, match=r"judge/checkpoint\.pt is in SHA256SUMS but not in the manifest"):
        verify(dest)


def test_install_refuses_other_data_and_names_train(shipment: tuple[Path, Path], tmp_path: Path) -> None:
    dest, _ = shipment
    other = _write_data(tmp_path / "other_data", pixel=8)  # one pixel value differs: another catalogue
    with pytest.raises(DataMismatchError) as caught:
        install(dest, tmp_path / "runs", other)
    message = str(caught.value)
    assert "catalogue content_sha256" in message and "interactions_simulated" not in message
    assert "couturier demo --train --profile quality" in message and "couturier data prepare --profile demo" in message
    assert not (tmp_path / "runs").exists()


def test_install_refuses_other_shoppers_naming_the_interactions(shipment: tuple[Path, Path], tmp_path: Path) -> None:
    dest, _ = shipment
    other = _write_data(tmp_path / "other_data", users=np.array([f"someone-else-{n}" for n in range(4)]))
    with pytest.raises(DataMismatchError) as caught:
        install(dest, tmp_path / "runs", other)
    message = str(caught.value)
    assert "interactions_simulated content_sha256" in message and "catalogue content_sha256" not in message
    assert not (tmp_path / "runs").exists()


def test_the_data_fingerprint_ignores_the_container(shipment: tuple[Path, Path], tmp_path: Path) -> None:
    dest, data = shipment
    before = dataset_fingerprint(data)
    arrays = read_npz(data / PRODUCTS_FILE)
    np.savez_compressed(data / PRODUCTS_FILE, **arrays)  # same content, another container
    manifest = json.loads((data / "dataset.json").read_text())
    manifest["files"][PRODUCTS_FILE] = shipped_module.sha256_file(data / PRODUCTS_FILE)
    (data / "dataset.json").write_text(json.dumps(manifest, indent=2))
    assert validate_dataset(data) == [] and dataset_fingerprint(data) != before  # other bytes, a valid dataset
    assert install(dest, tmp_path / "runs", data).is_dir()


def test_install_refuses_a_real_dataset_or_old_format_data(shipment: tuple[Path, Path], tmp_path: Path) -> None:
    dest, _ = shipment
    shop = _write_data(tmp_path / "shop", real=True)  # the very same products and shoppers, but real data
    with pytest.raises(DataMismatchError) as caught:
        install(dest, tmp_path / "runs", shop)
    message = str(caught.value)
    assert f"{shop} holds a real dataset" in message and "simulated demo world" in message
    assert "couturier data prepare --data-dir DIR" in message
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format_version": 1}))
    np.savez(old / "catalogue.npz", images=np.zeros((1, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(DataMismatchError, match=rf"couturier data prepare --force --data-dir {old}"):
        install(dest, tmp_path / "runs", old)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataMismatchError, match=r"not a dataset folder.*\n.*couturier data prepare --data-dir DIR"):
        install(dest, tmp_path / "runs", tmp_path / "empty")
    assert not (tmp_path / "runs").exists()


def test_install_never_overwrites_a_different_run_silently(shipment: tuple[Path, Path], tmp_path: Path) -> None:
    dest, data = shipment
    runs = tmp_path / "runs"
    (runs / PROFILE / "dvbpr").mkdir(parents=True)
    (runs / PROFILE / "dvbpr" / CHECKPOINT).write_bytes(b"another run")
    with pytest.raises(RunConflictError, match=r"dvbpr/checkpoint\.pt"):
        install(dest, runs, data)
    assert (runs / PROFILE / "dvbpr" / CHECKPOINT).read_bytes() == b"another run"
    notes: list[str] = []
    install(dest, runs, data, overwrite=True, echo=notes.append)
    assert (runs / PROFILE / "dvbpr" / CHECKPOINT).read_bytes() == (dest / "dvbpr" / CHECKPOINT).read_bytes()
    assert any("overwriting" in note and "dvbpr/checkpoint.pt" in note for note in notes)


def test_ship_refuses_above_the_size_limit(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "data")
    _write_run(tmp_path / "trained")
    dest = tmp_path / "shipped" / PROFILE
    with pytest.raises(SizeLimitError, match=r"above its limit of 1,000 bytes"):
        ship(tmp_path / "trained", PROFILE, dest, prepared_data_dir=data, size_limit=1000, verify_loaders=False)
    assert not dest.exists() and list((tmp_path / "shipped").iterdir()) == []  # no staging folder left behind
    ship(tmp_path / "trained", PROFILE, dest, prepared_data_dir=data, size_limit=10**6, verify_loaders=False)
    assert verify(dest)["size_limit_bytes"] == 10**6


def test_ship_refuses_a_run_trained_on_other_shoppers_or_incomplete(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "trained")
    other = _write_data(tmp_path / "data", users=np.array([f"someone-else-{n}" for n in range(4)]))
    with pytest.raises(DataMismatchError, match="trained on other data"):
        ship(tmp_path / "trained", PROFILE, tmp_path / "dest", prepared_data_dir=other, verify_loaders=False)
    (run / "judge" / CHECKPOINT).unlink()
    with pytest.raises(shipped_module.ShippedModelsError, match=r"couturier judge train --profile quality"):
        ship(tmp_path / "trained", PROFILE, tmp_path / "dest", prepared_data_dir=other, verify_loaders=False)
    assert not (tmp_path / "dest").exists()


def test_nothing_shipped_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".gitkeep").write_text("")
    for folder in (empty, tmp_path / "missing"):
        with pytest.raises(NothingShippedError, match=r"couturier demo --train"):
            verify(folder)


def test_checkpoint_name_matches_the_trainers() -> None:
    from couturier.export.evaluation.judge import CHECKPOINT as JUDGE_CHECKPOINT
    from couturier.export.training.common import CHECKPOINT as TRAINING_CHECKPOINT

    assert CHECKPOINT == TRAINING_CHECKPOINT == JUDGE_CHECKPOINT


# --- the demo's decision ---------------------------------------------------------------------------------------


def test_the_demo_refuses_when_nothing_is_shipped_and_train_is_off(tmp_path: Path) -> None:
    where = Locations(runs_root=tmp_path / "runs")
    empty = tmp_path / "shipped" / PROFILE
    empty.mkdir(parents=True)
    (empty / ".gitkeep").write_text("")
    with pytest.raises(NothingShippedError) as caught:
        plan_models(PROFILE, where, train=False, shipped=empty)
    message = str(caught.value)
    assert "couturier demo --train" in message and str(empty) in message and "is empty" in message
    assert plan_models(PROFILE, where, train=True, shipped=empty).action == "train"


def test_the_demo_installs_what_is_shipped_and_reuses_a_complete_run(
    shipment: tuple[Path, Path], tmp_path: Path
) -> None:
    dest, data = shipment
    where = Locations(runs_root=tmp_path / "runs")
    plan = plan_models(PROFILE, where, train=False, shipped=dest)
    assert plan.action == "install" and plan.shipped == dest and plan.reasons
    run_dir = install(dest, where.runs_root, data)
    reuse = plan_models(PROFILE, where, train=False, shipped=dest)
    assert reuse.action == "reuse" and run_differences(dest, run_dir) == []
    (run_dir / "gan" / CHECKPOINT).write_bytes(b"trained here")  # a run that is not the shipped one is named
    assert run_differences(dest, run_dir) == ["gan/checkpoint.pt"]
    assert plan_models(PROFILE, where, train=False, shipped=tmp_path / "nowhere").action == "reuse"


# --- the command line ------------------------------------------------------------------------------------------


def test_couturier_models_ship_and_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    data = _write_data(tmp_path / "data")
    _write_run(tmp_path / "trained")
    dest = tmp_path / "shipped" / PROFILE
    monkeypatch.setattr(shipped_module, "check_loaders", lambda folder: None)  # fake checkpoints: nothing to load
    args = ["models", "ship", "--profile", PROFILE, "--runs", str(tmp_path / "trained"), "--dest", str(dest)]
    result = runner.invoke(app, [*args, "--data-dir", str(data), "--device-name", "Test GPU"])
    assert result.exit_code == 0, result.output
    assert "Test GPU" in (dest / MODEL_CARD).read_text()
    ok = runner.invoke(app, ["models", "verify", "--shipped", str(dest)])
    assert ok.exit_code == 0 and "every sha256 matches" in ok.output
    _flip_byte(dest / USER_VECTORS, at=200)
    bad = runner.invoke(app, ["models", "verify", "--shipped", str(dest)])
    assert bad.exit_code == 2 and "user_vectors.npz changed" in bad.output


def test_the_demo_model_stage_installs_then_exports(
    shipment: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from couturier.export import pipeline
    from couturier.export.tools.demo import Stages, ensure_models

    dest, data = shipment
    where = Locations(runs_root=tmp_path / "runs", repo_dir=tmp_path / "repo", user_vectors_dir=tmp_path / "vectors")
    plan = plan_models(PROFILE, where, train=False, shipped=dest)

    class ExportCalled(Exception):
        pass

    def fake_export(run_dir: Path) -> None:
        raise ExportCalled(str(run_dir))

    monkeypatch.setattr(pipeline, "export_all", fake_export)  # the fake checkpoints cannot be exported
    lines: list[str] = []
    with pytest.raises(ExportCalled, match=str(where.runs_root / PROFILE)):
        ensure_models(SimpleNamespace(data_dir=data), PROFILE, where, Stages(total=1, echo=lines.append), plan=plan)
    assert training_reasons(where.runs_root / PROFILE) == []
    assert any("installing the shipped 'quality' models" in line for line in lines)
    other = plan_models("demo", where, train=False, shipped=dest)  # a quality shipment offered for demo
    with pytest.raises(shipped_module.ShippedModelsError, match="holds the 'quality' models, not 'demo'"):
        ensure_models(SimpleNamespace(data_dir=data), "demo", where, Stages(total=1, echo=lines.append), plan=other)
