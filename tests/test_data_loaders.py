"""Real-dataset loaders (DVBPR Amazon .npy, UT-Zap50K folders) on fixtures written here."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from couturier.export.data.dvbpr_amazon import load_dvbpr_amazon
from couturier.export.data.errors import DataFormatError, DatasetCorruptError, DatasetMissingError
from couturier.export.data.utzap50k import UTZAP_CATEGORIES, load_utzap50k


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


COLOURS = [(200, 30, 40), (30, 160, 60), (40, 70, 210), (240, 200, 40), (90, 90, 90)]


def _save_dvbpr(path: Path, parts: list) -> Path:
    arr = np.empty(len(parts), dtype=object)
    for k, part in enumerate(parts):
        arr[k] = part
    np.save(path, arr, allow_pickle=True)
    return path


def _dvbpr_parts(onehot: bool = False) -> list:
    def p(i: int) -> dict:
        return {b"productid": i, b"reviewerID": b"x"}

    user_train = {0: [p(0), p(1)], 1: [p(2)], 2: [p(3), p(4), p(0)]}
    user_validation = {0: [p(2)], 1: [p(4)], 2: [p(1)]}
    user_test = {0: [p(3)], 1: [p(0)], 2: [p(2)]}
    cats = [0, 5, 2, 2, 1]
    items = {
        i: {b"imgs": _jpeg(COLOURS[i]), b"c": (np.eye(6)[c] if onehot else c), b"asin": f"A{i}".encode()}
        for i, c in enumerate(cats)
    }
    return [user_train, user_validation, user_test, items, 3, 5]


@pytest.mark.parametrize("onehot", [False, True])
def test_dvbpr_npy_reads_exactly(tmp_path: Path, onehot: bool) -> None:
    path = _save_dvbpr(tmp_path / "AmazonFashion6ImgPartitioned.npy", _dvbpr_parts(onehot))
    data = load_dvbpr_amazon(path, image_size=16)
    inter, cat = data.interactions, data.catalogue
    assert inter.n_users == 3 and inter.n_items == 5
    assert [t.tolist() for t in inter.train] == [[0, 1], [2], [3, 4, 0]]
    assert inter.validation.tolist() == [2, 4, 1] and inter.test.tolist() == [3, 0, 2]
    assert inter.user_ids.tolist() == ["amazon-user-000000", "amazon-user-000001", "amazon-user-000002"]
    assert cat.product_ids.tolist() == [f"amazon-{i:06d}" for i in range(5)]
    assert cat.category.tolist() == [0, 5, 2, 2, 1] and len(cat.category_names) == 6
    assert cat.images.shape == (5, 16, 16, 3) and cat.images.dtype == np.uint8
    for i, colour in enumerate(COLOURS):
        assert np.abs(cat.images[i].astype(int) - np.array(colour)).max() <= 8  # JPEG tolerance
    assert inter.cold_items().tolist() == []
    assert set(cat.source_split.tolist()) == {"amazon"}


def test_dvbpr_lists_and_str_keys(tmp_path: Path) -> None:
    """Sequences instead of dicts, and str keys (a file re-saved by Python 3) work too."""
    ut, uv, ute, items, un, im = _dvbpr_parts()
    conv = lambda d: {k.decode(): v for k, v in d.items()}  # noqa: E731
    parts = [
        [[conv(e) for e in ut[u]] for u in range(3)],
        [uv[u] for u in range(3)],
        [ute[u] for u in range(3)],
        [conv(items[i]) for i in range(5)],
        np.int64(un),
        im,
    ]
    data = load_dvbpr_amazon(_save_dvbpr(tmp_path / "d.npy", parts), image_size=8)
    assert [t.tolist() for t in data.interactions.train] == [[0, 1], [2], [3, 4, 0]]


def test_dvbpr_invalid_inputs(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="does not exist"):
        load_dvbpr_amazon(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"hello")
    with pytest.raises(DataFormatError, match="not a readable .npy"):
        load_dvbpr_amazon(tmp_path / "junk.npy")
    parts = _dvbpr_parts()
    with pytest.raises(DataFormatError, match="expected a 6-element array.*got 5 elements"):
        load_dvbpr_amazon(_save_dvbpr(tmp_path / "a.npy", parts[:5]))
    bad = _dvbpr_parts()
    bad[0][1] = [{b"productid": 7}]
    with pytest.raises(DataFormatError, match=r"user_train\[1\]\[0\]: productid 7 out of range 0..4"):
        load_dvbpr_amazon(_save_dvbpr(tmp_path / "b.npy", bad))
    bad = _dvbpr_parts()
    bad[3][3] = {b"c": 1}
    with pytest.raises(DataFormatError, match=r"Item\[3\]: missing key b'imgs'"):
        load_dvbpr_amazon(_save_dvbpr(tmp_path / "c.npy", bad))
    bad = _dvbpr_parts()
    bad[3][4] = {b"imgs": b"\xff\xd8 not really a jpeg", b"c": 1}
    with pytest.raises(DatasetCorruptError, match=r"Item\[4\]: cannot decode"):
        load_dvbpr_amazon(_save_dvbpr(tmp_path / "d.npy", bad))
    bad = _dvbpr_parts()
    del bad[2][1]
    with pytest.raises(DataFormatError, match="user_test has no entry for index 1"):
        load_dvbpr_amazon(_save_dvbpr(tmp_path / "e.npy", bad))
    bad = _dvbpr_parts()
    bad[1][2] = []
    with pytest.raises(DataFormatError, match=r"user_validation\[2\] is empty"):
        load_dvbpr_amazon(_save_dvbpr(tmp_path / "f.npy", bad))
    with open(tmp_path / "g.npy", "wb") as fh:  # np.load also reads a plain pickled list
        pickle.dump(parts, fh)
    assert load_dvbpr_amazon(tmp_path / "g.npy", image_size=8).interactions.test.tolist() == [3, 0, 2]
    np.save(tmp_path / "h.npy", np.zeros((2, 3)))
    with pytest.raises(DataFormatError, match="expected a 6-element array.*shape \\(2, 3\\)"):
        load_dvbpr_amazon(tmp_path / "h.npy")


def _utzap_tree(root: Path) -> dict[str, tuple[int, int, int]]:
    layout = {
        "Shoes/Oxfords/Clarks/7604379.3.jpg": (200, 30, 40),
        "Boots/Knee High/Frye Co/100.jpg": (30, 160, 60),
        "Sandals/Flat/Teva/5.jpg": (40, 70, 210),
        "Slippers/Slipper Flats/L.B. Evans/9.jpg": (240, 200, 40),
        "Shoes/Sneakers and Athletic Shoes/Nike/1.jpg": (90, 90, 90),
    }
    for rel, colour in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (136, 102), colour).save(path, quality=95)  # UT-Zap50K photos are 136x102
    return layout


def test_utzap50k_reads_exactly(tmp_path: Path) -> None:
    layout = _utzap_tree(tmp_path)
    data = load_utzap50k(tmp_path, image_size=32)
    expected = sorted(layout)
    assert data.relative_paths.tolist() == expected
    assert data.product_ids.tolist() == [f"utzap:{rel}" for rel in expected]
    assert [UTZAP_CATEGORIES[c] for c in data.category] == [rel.split("/")[0] for rel in expected]
    assert data.subcategory.tolist() == [rel.split("/")[1] for rel in expected]
    assert data.brand.tolist() == [rel.split("/")[2] for rel in expected]
    assert data.images.shape == (5, 32, 32, 3)
    for img, rel in zip(data.images, expected):
        centre = img[12:20, 12:20].reshape(-1, 3).astype(int)
        assert np.abs(centre - np.array(layout[rel])).max() <= 8
        assert img[0, 0].min() >= 245  # padded to square with white
    cat = data.to_catalogue()
    assert cat.category_names == UTZAP_CATEGORIES and len(cat) == 5
    assert load_utzap50k(tmp_path, image_size=16, limit=2).product_ids.tolist() == [f"utzap:{r}" for r in expected[:2]]


def test_utzap50k_invalid_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError):
        load_utzap50k(tmp_path / "missing")
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataFormatError, match="does not look like UT-Zap50K"):
        load_utzap50k(tmp_path)
    nested = tmp_path / "nested"
    _utzap_tree(nested / "ut-zap50k-images-square")
    with pytest.raises(DataFormatError, match="did you mean .*ut-zap50k-images-square"):
        load_utzap50k(nested)
    shallow = tmp_path / "shallow"
    (shallow / "Shoes" / "Oxfords").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(shallow / "Shoes" / "Oxfords" / "1.jpg")
    with pytest.raises(DataFormatError, match="Shoes/Oxfords/1.jpg is not at <Category>/<SubCategory>/<Brand>"):
        load_utzap50k(shallow)
    extra = tmp_path / "extra"
    _utzap_tree(extra)
    (extra / "Hats").mkdir()
    with pytest.raises(DataFormatError, match="unexpected folder 'Hats'"):
        load_utzap50k(extra)
    broken = tmp_path / "broken"
    _utzap_tree(broken)
    (broken / "Shoes" / "Oxfords" / "Clarks" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DatasetCorruptError, match="bad.jpg: cannot decode"):
        load_utzap50k(broken)


def test_import_commands_write_catalogue_and_interactions(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from couturier.export.data.catalogue import Catalogue
    from couturier.export.data.cli import data_app
    from couturier.export.data.interactions import Interactions

    runner = CliRunner()
    npy = _save_dvbpr(tmp_path / "amazon.npy", _dvbpr_parts())
    result = runner.invoke(
        data_app, ["import-dvbpr", str(npy), "--out", str(tmp_path / "amazon"), "--image-size", "16"]
    )
    assert result.exit_code == 0, result.output
    assert "imported 5 items and 3 users" in result.output
    assert Catalogue.load(tmp_path / "amazon", "catalogue").images.shape == (5, 16, 16, 3)
    assert Interactions.load(tmp_path / "amazon", "interactions").test.tolist() == [3, 0, 2]
    assert (tmp_path / "amazon" / "contact_sheet.png").stat().st_size > 0

    bad = runner.invoke(data_app, ["import-utzap50k", str(tmp_path / "missing")])
    assert bad.exit_code == 2
    assert "does not exist" in bad.output
