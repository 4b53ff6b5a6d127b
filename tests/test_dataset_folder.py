"""Dataset folders: writing (DatasetWriter, split_interactions), opening read-only, validating, and
`couturier data prepare` never writing over a dataset it did not build (the data-loss bug of issue 9)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from couturier.export.data.catalogue import Catalogue
from couturier.export.data.cli import data_app
from couturier.export.data.dataset import Profile, prepare
from couturier.export.data.dataset_folder import (
    NotADatasetError,
    dataset_fingerprint,
    open_dataset,
    validate_dataset,
)
from couturier.export.data.dataset_writer import DatasetWriter, split_interactions
from couturier.export.data.errors import DataError, DatasetCorruptError
from couturier.export.data.stored import read_npz, write_npz

S = 8  # image side of the fixtures
CATEGORIES = ("shoes", "bags", "shirts")
TINY = Profile("tiny", items_per_class=8, heldout_per_class=1, n_users=6)


def _image(i: int) -> np.ndarray:
    return np.full((S, S, 3), (i * 7) % 256, dtype=np.uint8)


def _attrs(i: int) -> dict[str, str | float | None]:
    return {"colour": ("red", "blue", None)[i % 3], "price": None if i % 5 == 0 else 10.0 + i, "brand": f"b{i % 2}"}


USERS = [f"u{u}" for u in range(6) for _ in range(4)]
PRODUCTS = [f"p{(3 * u + k) % 20:02d}" for u in range(6) for k in range(4)]
TIMES = [1000 * u + (3 - k) for u in range(6) for k in range(4)]  # each user's FIRST row is the latest


def write_shop(out: Path, *, queries: bool = False, interactions: bool = True, force: bool = False) -> Path:
    """A real dataset: 20 products (3 categories, colour/brand/price), 6 users with 4 timed purchases."""
    with DatasetWriter(out, image_size=S, force=force) as writer:
        for i in range(20):
            writer.add_product(f"p{i:02d}", CATEGORIES[i % 3], _image(i), _attrs(i))
        if queries:
            for i in range(20, 23):
                writer.add_query(f"q{i}", CATEGORIES[i % 3], _image(i), {"colour": "red"})
        if interactions:
            writer.set_interactions(USERS, PRODUCTS, TIMES)
        return writer.finish(name="shop", source="a test shop", provenance="real", importer="pytest")


def checksums(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shop(tmp_path_factory.mktemp("shop") / "shop", queries=True)


# -- writing -----------------------------------------------------------------------------------------


def test_writer_round_trip(shop: Path) -> None:
    manifest = json.loads((shop / "dataset.json").read_text())
    assert manifest["format"] == "couturier-dataset" and manifest["schema_version"] == 1
    assert manifest["provenance"] == "real" and manifest["importer"] == "pytest"
    assert manifest["categories"] == sorted(CATEGORIES)  # undeclared vocabularies are sorted
    assert manifest["attributes"] == {
        "colour": {"type": "categorical", "values": ["blue", "red"]},
        "price": {"type": "numeric"},
        "brand": {"type": "categorical", "values": ["b0", "b1"]},
    }
    assert manifest["counts"] == {
        "products": 20,
        "queries": 3,
        "users": 6,
        "interactions": 24,
        "train": 12,
        "validation": 6,
        "test": 6,
    }
    assert set(manifest["files"]) == {
        "products.npz",
        "images_8.u8",
        "queries.npz",
        "queries_images_8.u8",
        "interactions.npz",
        "contact_sheet.png",
    }
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((shop / name).read_bytes()).hexdigest() == digest, name
    assert (shop / "images_8.u8").stat().st_size == 20 * S * S * 3

    data = open_dataset(shop)
    cat = data.catalogue
    assert data.provenance == "real" and data.oracle is None and data.profile is None and data.name == "shop"
    assert cat.product_ids.tolist() == [f"p{i:02d}" for i in range(20)]
    assert [cat.category_names[c] for c in cat.category] == [CATEGORIES[i % 3] for i in range(20)]
    for i in range(20):
        assert np.array_equal(cat.images[i], _image(i))
    colour = [None if c < 0 else cat.attribute_values["colour"][c] for c in cat.attributes["colour"]]
    assert colour == [_attrs(i)["colour"] for i in range(20)]
    assert np.array_equal(cat.colour, cat.attributes["colour"]) and cat.colour_names == ("blue", "red")
    assert (cat.fm_class == -1).all()  # Fashion-MNIST classes exist on the simulated world only
    price = cat.numeric_attributes["price"]
    assert np.isnan(price[0]) and price[1] == 11.0 and "price" not in cat.attributes
    assert data.heldout.product_ids.tolist() == ["q20", "q21", "q22"]
    assert data.heldout.attributes["brand"].tolist() == [-1, -1, -1]
    inter = data.interactions
    assert inter is not None and inter.n_users == 6 and inter.n_items == 20
    assert inter.user_ids.tolist() == [f"u{u}" for u in range(6)]  # first-seen order
    # by time: each user's first row is the latest (test), the second the one before (validation)
    assert [str(cat.product_ids[t]) for t in inter.test] == [PRODUCTS[4 * u] for u in range(6)]
    assert [str(cat.product_ids[v]) for v in inter.validation] == [PRODUCTS[4 * u + 1] for u in range(6)]
    assert sorted(str(cat.product_ids[i]) for i in inter.train[0]) == sorted(PRODUCTS[2:4])


def test_split_by_time_and_by_seeded_draw() -> None:
    users = np.array(["a", "b", "a", "a", "b", "b", "a"])
    times = np.array([5, 1, 9, 7, 2, 3, 1])
    assert split_interactions(users, times).tolist() == [0, 0, 2, 1, 1, 2, 0]
    tied = split_interactions(np.array(["a"] * 3), np.array([4, 4, 4]))
    assert tied.tolist() == [0, 1, 2]  # ties keep row order: the later row is the later purchase
    many = np.repeat(np.arange(50), 6)
    drawn = split_interactions(many, None, seed=3)
    assert np.array_equal(drawn, split_interactions(many, None, seed=3))
    assert not np.array_equal(drawn, split_interactions(many, None, seed=4))
    for code, per_user in ((0, 4), (1, 1), (2, 1)):
        assert np.bincount(many[drawn == code], minlength=50).tolist() == [per_user] * 50
    assert len({tuple(np.flatnonzero(drawn[many == u])) for u in range(50)}) > 5  # not always the same rows
    with pytest.raises(DataError, match=r"2 users have fewer than 3 interactions, .*\(first: x \(2\), z \(1\)\)"):
        split_interactions(np.array(["x", "y", "x", "y", "y", "z"]), None)


def test_writer_refusals(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "d", image_size=S) as writer:
        writer.add_product("p1", "shoes", _image(1))
        with pytest.raises(DataError, match="duplicate product id 'p1'"):
            writer.add_product("p1", "shoes", _image(1))
        with pytest.raises(DataError, match=r"product 'p2': image must be uint8 \(8, 8, 3\), got uint8 \(9, 8, 3\)"):
            writer.add_product("p2", "shoes", np.zeros((9, 8, 3), np.uint8))
        with pytest.raises(DataError, match="2 interactions name unknown products .*row 1: 'nope'.*row 2: 'gone'"):
            writer.set_interactions(["u", "u", "u"], ["p1", "nope", "gone"])
        with pytest.raises(DataError, match="fewer than 3 interactions"):
            writer.set_interactions(["u", "u"], ["p1", "p1"])
        with pytest.raises(DataError, match="1 users do not have exactly one test interaction"):
            writer.set_interactions(["u", "u", "u"], ["p1"] * 3, split=np.array([0, 1, 0]))
        with pytest.raises(DataError, match="simulated data needs its oracle"):
            writer.finish(name="x", source="y", provenance="simulated", importer="pytest")
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == []  # a failed finish leaves nothing
    with DatasetWriter(tmp_path / "d", image_size=S, categories=["bags"]) as writer:
        writer.add_product("p1", "shoes", _image(1))
        with pytest.raises(DataError, match=r"categories \['shoes'\] are not among the declared"):
            writer.finish(name="x", source="y", provenance="real", importer="pytest")
    assert list(tmp_path.iterdir()) == []


def test_writer_is_atomic_and_refuses_a_non_empty_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty: refusing .*--force"):
        DatasetWriter(out, image_size=S)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(out, image_size=S, force=True) as writer:
        writer.add_product("p1", "shoes", _image(1))
        raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]  # the failed import changed nothing
    write_shop(out, force=True)
    assert not (out / "precious.txt").exists() and validate_dataset(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial or old folder left beside it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert validate_dataset(write_shop(empty, interactions=False)) == []  # an empty folder is fine


# -- opening -----------------------------------------------------------------------------------------


def test_open_never_modifies_the_folder(shop: Path, tmp_path: Path) -> None:
    before = checksums(shop)
    data = open_dataset(shop, image_size=16, cache_dir=tmp_path / "cache", verify=True)
    assert data.catalogue.images.shape == (20, 16, 16, 3) and data.heldout.images.shape == (3, 16, 16, 3)
    assert data.image_size == 16 and data.cache_dir is not None and data.cache_dir.parent == tmp_path / "cache"
    assert np.abs(data.catalogue.images[5].astype(int) - int(_image(5)[0, 0, 0])).max() <= 1  # flat stays flat
    cached = sorted(p.name for p in data.cache_dir.iterdir())
    assert cached == ["images_16.u8", "queries_images_16.u8"]
    stamp = (data.cache_dir / "images_16.u8").stat().st_mtime_ns
    again = open_dataset(shop, image_size=16, cache_dir=tmp_path / "cache")  # built once, then reused
    assert (data.cache_dir / "images_16.u8").stat().st_mtime_ns == stamp
    assert np.array_equal(again.catalogue.images, data.catalogue.images)
    open_dataset(shop)
    assert checksums(shop) == before
    with pytest.raises(DataError, match="inside the dataset"):
        open_dataset(shop, image_size=16, cache_dir=shop / "cache")
    assert checksums(shop) == before


def test_images_are_a_read_only_memmap(shop: Path) -> None:
    cat = open_dataset(shop).catalogue
    assert isinstance(cat.images, np.memmap) and cat.images.filename is not None
    assert Path(cat.images.filename).name == "images_8.u8" and not cat.images.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        cat.images[0, 0, 0, 0] = 1
    sub = cat.subset([3, 1])  # copies the two selected rows only
    assert not isinstance(sub.images, np.memmap) and sub.images.shape == (2, S, S, 3)
    assert sub.attributes["colour"].tolist() == cat.attributes["colour"][[3, 1]].tolist()
    assert sub.attribute_values == cat.attribute_values and sub.numeric_attributes["price"][0] == 13.0


def test_without_queries_a_seeded_share_of_products_is_held_out(tmp_path: Path) -> None:
    folder = write_shop(tmp_path / "d")
    before = checksums(folder)
    data = open_dataset(folder, cache_dir=tmp_path / "cache")
    cat, held, inter = data.catalogue, data.heldout, data.interactions
    assert inter is not None and len(held) == 1 and len(cat) == 19
    assert set(held.product_ids.tolist()).isdisjoint(cat.product_ids.tolist())
    assert held.product_ids[0] not in {PRODUCTS[4 * u + k] for u in range(6) for k in (0, 1)}  # never a val/test item
    assert not cat.images.flags.writeable and inter.n_items == 19
    for row, pid in enumerate(cat.product_ids):  # the catalogue copy is row-aligned with its ids
        assert np.array_equal(cat.images[row], _image(int(str(pid)[1:])))
    again = open_dataset(folder, cache_dir=tmp_path / "cache")
    assert again.heldout.product_ids.tolist() == held.product_ids.tolist()  # seeded
    assert checksums(folder) == before


def test_not_a_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    for call in (
        lambda: open_dataset(folder, image_size=16, cache_dir=tmp_path / "cache"),
        lambda: dataset_fingerprint(folder),
    ):
        with pytest.raises(NotADatasetError) as err:
            call()
        assert str(folder) in str(err.value) and "no dataset.json" in str(err.value)
        assert "couturier data import-table" in str(err.value) and "couturier data import-dvbpr" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["photos"] and [p.name for p in folder.iterdir()] == ["a.jpg"]
    problems = validate_dataset(folder)
    assert len(problems) == 1 and "no dataset.json" in problems[0]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text(json.dumps({"fashion_mnist_sha256": {}}))
    (legacy / "catalogue.npz").write_bytes(b"")
    with pytest.raises(NotADatasetError, match=rf"old format.*couturier data prepare --force --data-dir {legacy}"):
        open_dataset(legacy)


# -- validating --------------------------------------------------------------------------------------


def _edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / "dataset.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def _edit_npz(folder: Path, file: str, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    arrays = read_npz(folder / file)
    change(arrays)
    write_npz(folder / file, arrays)


def _set(key: str, row: int, value: int) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = arrays[key].copy()
        arrays[key][row] = value

    return change


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing file": (lambda d: (d / "interactions.npz").unlink(), "missing file interactions.npz"),
    "extra file": (lambda d: (d / "notes.txt").write_text("hi"), "unexpected file notes.txt"),
    "checksum": (lambda d: _flip_byte(d / "images_8.u8"), "images_8.u8: sha256 mismatch"),
    "image size": (
        lambda d: (d / "images_8.u8").write_bytes((d / "images_8.u8").read_bytes()[:-5]),
        "images_8.u8: 3835 bytes, expected N*S*S*3 = 3840 (N=20 products, S=8)",
    ),
    "dtype": (
        lambda d: _edit_npz(d, "products.npz", lambda a: a.update(category=a["category"].astype(np.int64))),
        "products.npz: category must be int32 of shape (20,), got int64",
    ),
    "category code": (
        lambda d: _edit_npz(d, "products.npz", _set("category", 7, 3)),
        "products.npz: 1 category codes out of range 0..2 (first: row 7 (product 'p07') code 3)",
    ),
    "attribute code": (
        lambda d: _edit_npz(d, "products.npz", _set("attr.colour", 2, 5)),
        "products.npz: 1 attr.colour codes out of range -1..1 (first: row 2 (product 'p02') code 5)",
    ),
    "unknown product": (
        lambda d: _edit_npz(d, "interactions.npz", _set("product", 4, 20)),
        "interactions.npz: 1 rows point to unknown products.npz rows (product must be 0..19; first: row 4 product 20)",
    ),
    "unknown user": (
        lambda d: _edit_npz(d, "interactions.npz", _set("user", 0, -1)),
        "rows point to unknown user_ids (user must be 0..5; first: row 0 user -1)",
    ),
    "split code": (
        lambda d: _edit_npz(d, "interactions.npz", _set("split", 3, 7)),
        "interactions.npz: 1 invalid split codes (0 train, 1 validation, 2 test; first: row 3 split 7)",
    ),
    "user without test": (
        lambda d: _edit_npz(d, "interactions.npz", _set("split", 0, 0)),
        "1 users do not have exactly one test interaction (first: user 'u0' has 0)",
    ),
    "provenance": (lambda d: _edit_manifest(d, provenance="scraped"), "provenance is 'scraped', expected 'real' or"),
    "simulated without oracle": (
        lambda d: _edit_manifest(d, provenance="simulated"),
        "missing file oracle.npz (provenance 'simulated' needs the oracle)",
    ),
    "schema version": (lambda d: _edit_manifest(d, schema_version=7), "schema_version 7 is unknown"),
    "counts": (
        lambda d: _edit_manifest(d, counts={**json.loads((d / "dataset.json").read_text())["counts"], "products": 21}),
        "products.npz: 20 products, but the manifest counts 21",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_validate_names_each_kind_of_damage(damage: str, shop: Path, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    write_shop(folder)
    assert validate_dataset(folder) == []
    hurt, expected = DAMAGES[damage]
    hurt(folder)
    problems = validate_dataset(folder)
    assert any(expected in problem for problem in problems), problems
    result = CliRunner().invoke(_cli(), ["data", "validate", str(folder)])
    assert result.exit_code == 2 and expected in result.output and "NOT a valid dataset" in result.output
    if damage != "checksum":  # only the checksum needs verify=True to be seen
        with pytest.raises(DataError, match="is not a valid dataset"):
            open_dataset(folder, cache_dir=tmp_path / "cache")


def test_verify_rehashes_every_file(tmp_path: Path) -> None:
    folder = write_shop(tmp_path / "d", queries=True)
    fingerprint = dataset_fingerprint(folder)
    _flip_byte(folder / "queries_images_8.u8")
    open_dataset(folder)  # same size: only hashing notices
    with pytest.raises(DatasetCorruptError, match="queries_images_8.u8: sha256 mismatch"):
        open_dataset(folder, verify=True)
    assert dataset_fingerprint(folder) == fingerprint  # the manifest's record, not the damaged bytes


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    return app


def test_cli_validate_summary(shop: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["data", "validate", str(shop)])
    assert result.exit_code == 0, result.output
    assert "valid real dataset 'shop'" in result.output and "20 products, 3 queries, 6 users" in result.output
    result = CliRunner().invoke(_cli(), ["data", "validate", str(tmp_path)])
    assert result.exit_code == 2 and "no dataset.json" in result.output


def test_catalogue_without_attributes_still_builds() -> None:
    cat = Catalogue(
        product_ids=np.array(["a"]),
        images=np.zeros((1, S, S, 3), np.uint8),
        category=np.zeros(1, np.int64),
        fm_class=np.full(1, -1),
        colour=np.full(1, -1),
        source_split=np.array(["x"]),
        source_index=np.zeros(1, np.int64),
    )
    assert cat.attributes == {} and cat.subset([0]).attribute_values == {}


# -- prepare never writes over other data (the data-loss bug of issue 9) -----------------------------


def test_prepare_refuses_to_overwrite_a_real_dataset(tmp_path: Path) -> None:
    folder = write_shop(tmp_path / "shop")
    before = checksums(folder)
    for force in (False, True):
        with pytest.raises(DataError, match=rf"{folder} holds a real dataset .*never writes into it") as err:
            prepare(folder, TINY, progress=False, force=force)
        assert "--dataset" in str(err.value)
        assert checksums(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop"]
    result = CliRunner().invoke(_cli(), ["data", "prepare", "--data-dir", str(folder), "--no-progress"])
    assert result.exit_code == 2 and "holds a real dataset" in result.output
    assert checksums(folder) == before


def test_prepare_refuses_other_folders(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "catalogue.npz").write_bytes(b"a user's old import")  # old import-dvbpr output: real data
    (mine / "interactions.npz").write_bytes(b"purchases")
    before = checksums(mine)
    for force in (False, True):
        with pytest.raises(DataError, match=rf"{mine} is not empty and holds no simulated dataset"):
            prepare(mine, TINY, progress=False, force=force)
    assert checksums(mine) == before


def test_prepare_rebuilds_its_own_old_format_simulated_data(tmp_path: Path) -> None:
    """couturier's own derived data in the old layout (its manifest says Fashion-MNIST) is rebuilt as a
    dataset folder without --force; an old folder of anything else is refused (test above)."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text(json.dumps({"real": "images: Fashion-MNIST", "fashion_mnist_sha256": {}}))
    (legacy / "catalogue.npz").write_bytes(b"old")
    data = prepare(legacy, TINY, progress=False)
    assert data.provenance == "simulated" and not (legacy / "catalogue.npz").exists()
    assert validate_dataset(legacy) == [] and data.interactions is not None and data.interactions.n_users == 6
