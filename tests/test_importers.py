"""The importers end to end: DVBPR ``.npy``, a shop's CSV/Parquet tables and UT-Zap50K folders -> dataset
folders; bad rows refused (message) or skipped (manifest); ``--force``; the ``couturier data import-*``
commands. Fixtures are made here (tests/support/importer_fixtures.py); images are tiny."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from couturier.export.data.cli import data_app
from couturier.export.data.dataset_folder import validate_dataset
from couturier.export.data.errors import DataError, DataFormatError, DatasetMissingError
from couturier.export.data.importers import (
    ImportRefused,
    UnsafePickleError,
    import_dvbpr,
    import_table,
    import_utzap50k,
)
from support.importer_fixtures import (
    COLOURS,
    DVBPR_COLOURS,
    dvbpr_parts,
    malicious_npy,
    py2_npy,
    py3_npy,
    shop_table,
    str_keys,
    utzap_tree,
)

S = 16


class Folder:
    """A written dataset folder, read back file by file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifest: dict[str, Any] = json.loads((path / "dataset.json").read_text())
        with np.load(path / "products.npz") as z:
            self.products = {k: z[k] for k in z.files}
        size = self.manifest["image_size"]
        self.images = np.fromfile(path / f"images_{size}.u8", dtype=np.uint8).reshape(-1, size, size, 3)
        self.interactions: dict[str, np.ndarray] | None = None
        if (path / "interactions.npz").exists():
            with np.load(path / "interactions.npz") as z:
                self.interactions = {k: z[k] for k in z.files}

    @property
    def ids(self) -> list[str]:
        return self.products["product_id"].tolist()

    def category_names(self) -> list[str]:
        return [self.manifest["categories"][c] for c in self.products["category"]]

    def purchases(self) -> list[tuple[str, str, int]]:
        """(user id, product id, split) per interaction row."""
        assert self.interactions is not None
        i = self.interactions
        return [(str(i["user_ids"][u]), self.ids[p], int(s)) for u, p, s in zip(i["user"], i["product"], i["split"])]

    def centre(self, row: int) -> np.ndarray:
        return self.images[row, S // 2, S // 2].astype(int)


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# -- DVBPR ---------------------------------------------------------------------------------------------------


def test_import_dvbpr_python2_file_keeps_asin_split_and_images(tmp_path: Path) -> None:
    npy = py2_npy(tmp_path / "AmazonFashion6ImgPartitioned.npy", dvbpr_parts())
    names = ["women-tops", "men-tops", "women-bottoms", "men-bottoms", "women-shoes", "men-shoes"]
    out = import_dvbpr(npy, tmp_path / "shop", image_size=S, category_names=names, progress=False)
    data = Folder(out)
    assert validate_dataset(out) == []
    assert data.ids == [f"B00{i}" for i in range(6)]
    assert data.manifest["categories"] == names  # the file's index order, all six even if unused
    assert data.category_names() == [names[c] for c in (0, 5, 2, 2, 1, 0)]
    assert data.manifest["provenance"] == "real" and data.manifest["source"] == f"DVBPR file {npy.name}"
    for row, colour in enumerate(DVBPR_COLOURS):  # RGB/grayscale/CMYK JPEGs, an RGBA PNG, a large JPEG
        assert np.abs(data.centre(row) - colour).max() <= 12, row
    assert (data.images[0, 0] == 255).all()  # the 120x40 photo is padded on white
    assert sorted(data.purchases()) == sorted(
        [
            *[("R0", "B000", 0), ("R0", "B001", 0), ("R0", "B002", 1), ("R0", "B003", 2)],
            *[("R1", "B002", 0), ("R1", "B004", 1), ("R1", "B005", 2)],
            *[("R2", "B003", 0), ("R2", "B004", 0), ("R2", "B000", 0), ("R2", "B001", 1), ("R2", "B002", 2)],
        ]
    )
    assert "split: the file's own train/validation/test lists" in data.manifest["notes"]
    assert data.manifest["skipped"] == {}


def test_import_dvbpr_str_keys_lists_onehot_and_no_asin(tmp_path: Path) -> None:
    parts = str_keys(dvbpr_parts(onehot=True, asin=False))
    parts[4] = np.int64(parts[4])
    out = import_dvbpr(py3_npy(tmp_path / "d.npy", parts), tmp_path / "out", image_size=S, progress=False)
    data = Folder(out)
    assert data.ids == [f"item-{i}" for i in range(6)]
    assert data.manifest["categories"] == [f"category-{c}" for c in range(6)]
    assert any("no 'asin'" in note and "item-<index>" in note for note in data.manifest["notes"])
    assert data.interactions is not None and data.interactions["user_ids"].tolist() == ["R0", "R1", "R2"]


def test_import_dvbpr_structure_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="does not exist"):
        import_dvbpr(tmp_path / "missing.npy", tmp_path / "o", progress=False)
    parts = dvbpr_parts()
    with pytest.raises(DataFormatError, match="expected a 6-element array.*got 5 elements"):
        import_dvbpr(py3_npy(tmp_path / "a.npy", parts[:5]), tmp_path / "o", progress=False)
    bad = dvbpr_parts()
    del bad[2][1]
    with pytest.raises(DataFormatError, match="user_test has no entry for index 1"):
        import_dvbpr(py3_npy(tmp_path / "b.npy", bad), tmp_path / "o", progress=False)
    with pytest.raises(DataFormatError, match=r"the file has 6 categories \(0..5\) but 2 names were given"):
        import_dvbpr(py3_npy(tmp_path / "c.npy", parts), tmp_path / "o", category_names=["a", "b"], progress=False)
    _no_leftovers(tmp_path / "o")


def test_import_dvbpr_bad_rows_refused_then_skipped(tmp_path: Path) -> None:
    parts = dvbpr_parts()
    parts[3][4][b"imgs"] = parts[3][4][b"imgs"][:300]  # truncated JPEG
    parts[0][1].append({b"productid": 9})  # no such item
    npy = py2_npy(tmp_path / "d.npy", parts)
    out = tmp_path / "shop"
    with pytest.raises(ImportRefused) as refused:
        import_dvbpr(npy, out, image_size=S, progress=False)
    message = str(refused.value)
    assert "refused to import" in message and "nothing was written" in message
    assert "1 corrupt, truncated or unsupported images [corrupt_image]" in message
    assert "Item[4], product 'B004': corrupt or truncated JPEG" in message
    assert "user_train[1][1]: productid 9 is not an item (0..5)" in message
    assert "--skip-invalid" in message
    _no_leftovers(out)

    data = Folder(import_dvbpr(npy, out, image_size=S, skip_invalid=True, progress=False))
    assert data.ids == ["B000", "B001", "B002", "B003", "B005"]
    skipped = data.manifest["skipped"]
    assert skipped["corrupt_image"]["count"] == 1 and "Item[4]" in skipped["corrupt_image"]["examples"][0]
    assert skipped["unknown_product"]["count"] == 1
    # B004 was user 1's validation purchase: user 1 cannot be split any more and is left out
    assert skipped["purchase_of_skipped_product"]["count"] == 2
    assert skipped["too_few_purchases"]["count"] == 1 and "'R1'" in skipped["too_few_purchases"]["examples"][0]
    assert {u for u, _, _ in data.purchases()} == {"R0", "R2"}


def test_import_dvbpr_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    with pytest.raises(UnsafePickleError, match="refused and nothing ran"):
        import_dvbpr(malicious_npy(tmp_path / "evil.npy", marker), tmp_path / "out", progress=False)
    assert not marker.exists()
    _no_leftovers(tmp_path / "out")


# -- tables --------------------------------------------------------------------------------------------------


def test_import_table_csv_png_and_jpeg_time_split(tmp_path: Path) -> None:
    products, interactions = shop_table(tmp_path / "shop", n_users=3, purchases_per_user=4)
    out = import_table(products, interactions, tmp_path / "ds", image_size=S, progress=False)
    data = Folder(out)
    assert validate_dataset(out) == []
    assert data.ids == [f"P{i}" for i in range(6)]
    assert data.manifest["categories"] == ["shoes", "tops"]
    assert data.category_names() == ["tops"] * 3 + ["shoes"] * 3
    assert data.manifest["attributes"] == {
        "colour": {"type": "categorical", "values": ["blue", "red"]},
        "price": {"type": "numeric"},
    }
    assert data.products["attr.colour"].tolist() == [-1, 1, 0, -1, 0, 1]  # empty cell = unknown
    assert data.products["attr.price"].tolist() == [10.0 + i for i in range(6)]
    for row in range(6):  # JPEG and PNG photos, each product its own
        assert np.abs(data.centre(row) - COLOURS[row]).max() <= 10, row
    # by time: each user's last purchase (j = 3) is test, the one before validation
    for user, product, split in data.purchases():
        j = (int(product[1:]) - int(user[1:])) % 6
        assert split == {3: 2, 2: 1}.get(j, 0), (user, product, split)
    assert data.interactions is not None and data.interactions["timestamp"].min() == 1000
    assert any(note.startswith("split: by time") for note in data.manifest["notes"])


def test_import_table_parquet_without_timestamps_seeded_split(tmp_path: Path) -> None:
    products, interactions = shop_table(
        tmp_path / "shop", n_users=4, purchases_per_user=5, timestamps=False, parquet=True
    )
    first = Folder(import_table(products, interactions, tmp_path / "a", image_size=S, seed=3, progress=False))
    again = Folder(import_table(products, interactions, tmp_path / "b", image_size=S, seed=3, progress=False))
    assert first.ids == [f"P{i}" for i in range(6)]
    assert first.products["attr.colour"].tolist() == [-1, 1, 0, -1, 0, 1]
    assert first.purchases() == again.purchases()  # the same seed draws the same split
    splits = [s for _, _, s in first.purchases()]
    assert splits.count(2) == 4 and splits.count(1) == 4  # one test and one validation per user
    assert first.interactions is not None and (first.interactions["timestamp"] == -1).all()
    draws = {
        tuple(
            s
            for _, _, s in Folder(
                import_table(products, interactions, tmp_path / f"s{k}", image_size=S, seed=k, progress=False)
            ).purchases()
        )
        for k in range(4)
    }
    assert len(draws) > 1  # the seed matters
    assert any("random draw per user, seed 3" in note for note in first.manifest["notes"])


def _dirty_shop(folder: Path) -> tuple[Path, Path]:
    products, interactions = shop_table(folder, n_users=3, purchases_per_user=4)
    jpeg = folder / "img" / "2.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated
    with interactions.open("a") as fh:
        fh.write("u0,NOPE,5000\n")  # line 14: an unknown product
    return products, interactions


def test_import_table_dirty_refused_with_rows_named(tmp_path: Path) -> None:
    products, interactions = _dirty_shop(tmp_path / "shop")
    out = tmp_path / "ds"
    with pytest.raises(ImportRefused) as refused:
        import_table(products, interactions, out, image_size=S, progress=False)
    message = str(refused.value)
    assert message.startswith("refused to import products.csv + interactions.csv: ")
    assert "1 corrupt, truncated or unsupported images [corrupt_image]" in message
    assert "products.csv line 4, product 'P2': corrupt or truncated JPEG" in message
    assert "1 purchases of unknown products [unknown_product]" in message
    assert "interactions.csv line 14, product 'NOPE': user 'u0': not in the products file" in message
    assert "purchase_of_skipped_product" in message and "--skip-invalid" in message
    _no_leftovers(out)


def test_import_table_skip_invalid_records_what_was_skipped(tmp_path: Path) -> None:
    products, interactions = _dirty_shop(tmp_path / "shop")
    data = Folder(
        import_table(products, interactions, tmp_path / "ds", image_size=S, skip_invalid=True, progress=False)
    )
    assert data.ids == ["P0", "P1", "P3", "P4", "P5"]
    skipped = data.manifest["skipped"]
    assert set(skipped) == {"corrupt_image", "unknown_product", "purchase_of_skipped_product"}
    assert skipped["corrupt_image"] == {
        "count": 1,
        "examples": [skipped["corrupt_image"]["examples"][0]],
    } and skipped["corrupt_image"]["examples"][0].startswith("products.csv line 4, product 'P2': corrupt or truncated")
    assert skipped["unknown_product"]["count"] == 1 and "line 14" in skipped["unknown_product"]["examples"][0]
    assert skipped["purchase_of_skipped_product"]["count"] == 3  # every user bought P2
    assert "P2" not in {p for _, p, _ in data.purchases()} and len(data.purchases()) == 9
    assert validate_dataset(data.path) == []


def test_import_table_duplicate_ids_and_too_few_purchases(tmp_path: Path) -> None:
    products, interactions = shop_table(tmp_path / "shop", n_users=3, purchases_per_user=4)
    with products.open("a") as fh:
        fh.write("P1,img/0.jpg,tops,red,99\n")  # line 8: P1 again
    with interactions.open("a") as fh:
        fh.write("newbie,P0,1\nnewbie,P1,2\n")  # 2 purchases: too few for train + validation + test
    with pytest.raises(ImportRefused) as refused:
        import_table(products, interactions, tmp_path / "ds", image_size=S, progress=False)
    message = str(refused.value)
    assert "products.csv line 8, product 'P1': product_id already on products.csv line 3" in message
    assert "1 users with fewer than 3 purchases" in message
    assert "interactions.csv line 14 (user 'newbie'): 2 usable purchases; the split needs 3" in message
    data = Folder(
        import_table(products, interactions, tmp_path / "ds", image_size=S, skip_invalid=True, progress=False)
    )
    assert data.ids == [f"P{i}" for i in range(6)] and data.products["attr.price"][1] == 11.0  # the first P1 kept
    assert "newbie" not in {u for u, _, _ in data.purchases()}
    assert data.manifest["skipped"]["duplicate_id"]["count"] == 1
    assert data.manifest["skipped"]["too_few_purchases"]["count"] == 1


def test_import_table_image_paths_urls_traversal_and_absolute(tmp_path: Path) -> None:
    products, interactions = shop_table(tmp_path / "shop")
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (10, 10), COLOURS[1]).save(outside)
    text = products.read_text().splitlines()
    text[1] = text[1].replace("img/0.jpg", "https://cdn.example.com/0.jpg")
    text[2] = text[2].replace("img/1.png", "../elsewhere.png")
    text[3] = text[3].replace("img/2.jpg", str(outside))  # absolute: allowed
    text[4] = text[4].replace("img/3.png", "img/missing.png")
    products.write_text("\n".join(text) + "\n")
    with pytest.raises(ImportRefused) as refused:
        import_table(products, interactions, tmp_path / "ds", image_size=S, progress=False)
    message = str(refused.value)
    assert "3 missing or unreadable image files [unreadable_file]" in message
    assert "product 'P0': the image is a URL; nothing is downloaded" in message
    assert "product 'P1': relative path '../elsewhere.png' leaves the products file's folder" in message
    assert "product 'P3': file" in message and "missing.png does not exist" in message
    assert "P2" not in message.split("[unreadable_file]")[1].split("[")[0]


def test_import_refuses_non_empty_out_unless_force(tmp_path: Path) -> None:
    products, interactions = shop_table(tmp_path / "shop")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty.*--force"):
        import_table(products, interactions, out, image_size=S, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    import_table(products, interactions, out, image_size=S, force=True, progress=False)
    assert not (out / "notes.txt").exists() and validate_dataset(out) == []


# -- UT-Zap50K -----------------------------------------------------------------------------------------------


def test_import_utzap50k_catalogue_only(tmp_path: Path) -> None:
    layout = utzap_tree(tmp_path / "ut")
    data = Folder(import_utzap50k(tmp_path / "ut", tmp_path / "ds", image_size=S, progress=False))
    expected = sorted(layout)
    assert data.ids == [f"utzap:{rel}" for rel in expected]
    assert data.manifest["categories"] == ["Boots", "Sandals", "Shoes", "Slippers"]
    assert data.category_names() == [rel.split("/")[0] for rel in expected]
    brands = data.manifest["attributes"]["brand"]["values"]
    assert [brands[b] for b in data.products["attr.brand"]] == [rel.split("/")[2] for rel in expected]
    for row, rel in enumerate(expected):
        assert np.abs(data.centre(row) - layout[rel]).max() <= 10
    assert data.interactions is None and data.manifest["counts"]["interactions"] == 0
    assert any(
        note.startswith("catalogue only") and "interactions from elsewhere" in note for note in data.manifest["notes"]
    )
    assert validate_dataset(data.path) == []
    limited = Folder(import_utzap50k(tmp_path / "ut", tmp_path / "two", image_size=S, limit=2, progress=False))
    assert limited.ids == [f"utzap:{rel}" for rel in expected[:2]]


def test_import_utzap50k_corrupt_image(tmp_path: Path) -> None:
    utzap_tree(tmp_path / "ut")
    (tmp_path / "ut" / "Shoes" / "Oxfords" / "Clarks" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(
        ImportRefused, match=r"Clarks/bad.jpg, product 'utzap:Shoes/Oxfords/Clarks/bad.jpg': not a JPEG"
    ):
        import_utzap50k(tmp_path / "ut", tmp_path / "ds", image_size=S, progress=False)
    _no_leftovers(tmp_path / "ds")
    data = Folder(import_utzap50k(tmp_path / "ut", tmp_path / "ds", image_size=S, skip_invalid=True, progress=False))
    assert len(data.ids) == 5 and data.manifest["skipped"]["corrupt_image"]["count"] == 1


# -- commands ------------------------------------------------------------------------------------------------


def test_import_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    npy = py2_npy(tmp_path / "shop.npy", dvbpr_parts())
    result = runner.invoke(
        data_app,
        [
            "import-dvbpr",
            str(npy),
            "--out",
            str(tmp_path / "d"),
            "--image-size",
            "16",
            "--categories",
            "a,b,c,d,e,f",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "imported 6 products in 6 categories (a, b, c, d, e, f) from DVBPR file shop.npy" in result.output
    assert "3 users, 12 interactions: 6 train, 3 validation, 3 test" in result.output
    assert "skipped: nothing" in result.output and f"dataset folder: {tmp_path / 'd'}" in result.output

    again = runner.invoke(data_app, ["import-dvbpr", str(npy), "--out", str(tmp_path / "d"), "--no-progress"])
    assert again.exit_code == 2 and "is not empty" in again.output and "Traceback" not in again.output

    products, interactions = _dirty_shop(tmp_path / "shop")
    args = [
        "import-table",
        "--products",
        str(products),
        "--interactions",
        str(interactions),
        "--out",
        str(tmp_path / "t"),
    ]
    refused = runner.invoke(data_app, [*args, "--image-size", "16", "--no-progress"])
    assert refused.exit_code == 2 and "error: refused to import products.csv + interactions.csv" in refused.output
    assert "products.csv line 4, product 'P2'" in refused.output and not (tmp_path / "t").exists()
    skipped = runner.invoke(data_app, [*args, "--image-size", "16", "--skip-invalid", "--no-progress"])
    assert skipped.exit_code == 0, skipped.output
    assert "imported 5 products in 2 categories (shoes, tops)" in skipped.output
    assert "skipped (recorded under 'skipped' in dataset.json): 1 corrupt_image, 1 unknown_product" in skipped.output

    utzap_tree(tmp_path / "ut")
    result = runner.invoke(
        data_app,
        ["import-utzap50k", str(tmp_path / "ut"), "--out", str(tmp_path / "u"), "--limit", "3", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "imported 3 products" in result.output
    assert "no interactions: recommendation training needs interactions from elsewhere" in result.output
    missing = runner.invoke(data_app, ["import-utzap50k", str(tmp_path / "missing"), "--out", str(tmp_path / "m")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
