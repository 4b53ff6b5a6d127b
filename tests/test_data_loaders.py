"""The untrusted-input readers under the importers: image decoding, the restricted unpickler, table files
and the UT-Zap50K layout. Fixtures are written here; images are tiny."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from couturier.export.data.errors import DataFormatError, DatasetMissingError
from couturier.export.data.importers import decode_pool
from couturier.export.data.importers.images import ImageDecodeError, decode_image
from couturier.export.data.importers.safe_pickle import UnsafePickleError, load_object_npy, restricted_loads
from couturier.export.data.importers.table_files import read_table
from couturier.export.data.importers.utzap50k import scan_utzap50k
from support.importer_fixtures import Py2Pickler, encode, malicious_npy, py2_npy

RED = (200, 30, 40)


def _close(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 10) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(colour)).max() <= tol)


# -- images ------------------------------------------------------------------------------------------------


def _p_with_transparency() -> Image.Image:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 0, 0, *RED] + [0] * 762)
    img.paste(1, (5, 5, 15, 15))
    img.info["transparency"] = 0
    return img


MODES = {
    "RGB JPEG, wide": (lambda: Image.new("RGB", (60, 20), RED), "JPEG", RED),
    "grayscale JPEG, tall": (lambda: Image.new("L", (10, 40), 90), "JPEG", (90, 90, 90)),
    "CMYK JPEG": (lambda: Image.new("RGB", (30, 30), RED).convert("CMYK"), "JPEG", RED),
    "RGBA PNG": (lambda: Image.new("RGBA", (30, 30), (*RED, 255)), "PNG", RED),
    "LA PNG": (lambda: Image.new("LA", (30, 30), (60, 255)), "PNG", (60, 60, 60)),
    "P GIF with transparency": (_p_with_transparency, "GIF", RED),
    "16-bit PNG": (lambda: Image.fromarray(np.full((30, 30), 257 * 100, np.uint16)), "PNG", (100, 100, 100)),
    "WebP": (lambda: Image.new("RGB", (30, 30), RED), "WEBP", RED),
    "BMP": (lambda: Image.new("RGB", (30, 30), RED), "BMP", RED),
    "CMYK TIFF": (lambda: Image.new("RGB", (30, 30), RED).convert("CMYK"), "TIFF", RED),
}


@pytest.mark.parametrize("name", list(MODES))
def test_decode_image_any_mode_to_rgb_square(name: str) -> None:
    make, fmt, colour = MODES[name]
    img = decode_image(encode(make(), fmt), 16)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert _close(img[8, 8], colour, 12), img[8, 8]


def test_decode_image_keeps_aspect_on_white_and_composites_alpha(tmp_path: Path) -> None:
    wide = decode_image(encode(Image.new("RGB", (64, 16), RED), "PNG"), 16)
    assert _close(wide[8, 0], RED, 0) and _close(wide[8, 15], RED, 0)  # full width
    assert (wide[0] == 255).all() and (wide[15] == 255).all()  # padded top and bottom with white
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # transparent blue -> white
    rgba.paste((*RED, 255), (5, 5, 15, 15))
    out = decode_image(encode(rgba, "PNG"), 20)
    assert (out[0, 0] == 255).all() and _close(out[10, 10], RED, 0)
    gif = decode_image(encode(_p_with_transparency(), "GIF"), 20)
    assert (gif[0, 0] == 255).all()
    path = tmp_path / "big.jpg"  # a file path, and a large JPEG (decoded in draft mode)
    Image.new("RGB", (1600, 800), RED).save(path, quality=90)
    big = decode_image(path, 32)
    assert _close(big[16, 16], RED) and (big[0, 16] > 245).all()


def test_decode_image_applies_exif_orientation() -> None:
    img = Image.new("RGB", (40, 10), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the photo is upright when tall
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()), 20)
    assert _close(out[2, 10], RED) and (out[10, 0] > 245).all()  # tall: white left and right


def _noise_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


BAD = {
    "truncated JPEG": (lambda: _noise_jpeg()[: len(_noise_jpeg()) * 2 // 3], "corrupt or truncated JPEG"),
    "truncated PNG": (lambda: encode(Image.new("RGB", (30, 30), RED), "PNG")[:60], "corrupt or truncated PNG"),
    "PNG cut in its header": (lambda: encode(Image.new("RGB", (30, 30), RED), "PNG")[:20], "corrupt or truncated PNG"),
    "junk": (lambda: b"hello, not an image", "not a JPEG, PNG, WEBP, GIF, BMP, TIFF image"),
    "empty": (lambda: b"", "empty file"),
    "HEIC": (lambda: b"\x00\x00\x00\x18ftypheic" + bytes(32), "HEIC images are not imported"),
    "EPS (would run Ghostscript)": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "PostScript/EPS"),
    "ICO": (lambda: encode(Image.new("RGB", (16, 16), RED), "ICO"), "ICO images are not imported"),
    "over the pixel cap": (lambda: _png_header(9000, 9000), "9000x9000 = 81,000,000 pixels, above the limit"),
    "decompression bomb": (lambda: _png_header(40000, 40000), "image too large"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_decode_image_refuses_bad_bytes_with_a_reason(name: str) -> None:
    make, reason = BAD[name]
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_image(make(), 16)
    assert info.value.kind == "corrupt_image"


def test_decode_image_unreadable_files_and_pixel_cap_per_call(tmp_path: Path) -> None:
    for path, reason in ((tmp_path / "missing.jpg", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(ImageDecodeError, match=reason) as info:
            decode_image(path, 16)
        assert info.value.kind == "unreadable_file"
    small = encode(Image.new("RGB", (20, 20), RED), "PNG")
    with pytest.raises(ImageDecodeError, match="20x20 = 400 pixels, above the limit of 399"):
        decode_image(small, 16, max_pixels=399)
    assert decode_image(small, 16).shape == (16, 16, 3)  # the cap is per call: nothing global changed
    with pytest.raises(ImageDecodeError, match=r"PNG images are not admitted here \(admitted: JPEG\)"):
        decode_image(small, 16, formats=("JPEG",))
    copy = pickle.loads(pickle.dumps(ImageDecodeError("gone", "unreadable_file")))  # crosses process pools
    assert (copy.reason, copy.kind) == ("gone", "unreadable_file")


def test_decode_images_pool_keeps_order_and_reports_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_pool, "CHUNK", 3)  # 10 images -> 4 chunks over 2 worker processes
    colours = [(20 * i, 100, 250 - 20 * i) for i in range(10)]
    sources: list[bytes] = [encode(Image.new("RGB", (12, 12), c), "PNG") for c in colours]
    sources[4] = b"broken"
    out = list(decode_pool.decode_images(sources, 8, workers=2))
    assert len(out) == 10 and isinstance(out[4], ImageDecodeError) and "not a JPEG" in out[4].reason
    for i, colour in enumerate(colours):
        if i != 4:
            assert _close(out[i][4, 4], colour, 0), i
    assert [isinstance(o, np.ndarray) for o in decode_pool.decode_images(sources, 8, workers=0)] == [
        i != 4 for i in range(10)
    ]


# -- the restricted unpickler -------------------------------------------------------------------------------


def _plain_object_array() -> np.ndarray:
    arr = np.empty(3, dtype=object)
    arr[0] = {
        b"imgs": b"\xff\xd8 bytes",
        "c": np.int64(3),
        b"onehot": np.eye(3)[1],
        "mixed": [1, 2.5, None, True, "text", (1, b"x"), {1, 2}, frozenset([3]), 3 + 4j, 2**80, bytearray(b"z\xff")],
        "scalars": [np.float32(1.5), np.bool_(True), np.array([b"ab", b"cd"]), np.array(["u", "v"])],
    }
    arr[1], arr[2] = 7, np.arange(6).reshape(2, 3).T  # a Fortran-ordered array
    return arr


@pytest.mark.parametrize("protocol", range(6))
def test_restricted_unpickler_reads_plain_data_of_every_protocol(protocol: int) -> None:
    data = pickle.dumps(_plain_object_array(), protocol=protocol)
    assert repr(restricted_loads(data)) == repr(pickle.loads(data))


def test_load_object_npy_reads_npy_py2_files_and_bare_pickles(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _plain_object_array(), allow_pickle=True)
    assert repr(load_object_npy(tmp_path / "a.npy")) == repr(_plain_object_array())
    py2 = py2_npy(tmp_path / "py2.npy", [{b"asin": b"B0001", b"c": np.int64(2)}, 5])
    assert b"numpy.core.multiarray" in py2.read_bytes() and b"_codecs" not in py2.read_bytes()  # Python 2 style
    loaded = load_object_npy(py2)
    assert loaded[0] == {b"asin": b"B0001", b"c": 2} and loaded[1] == 5
    (tmp_path / "bare.pkl").write_bytes(pickle.dumps([1, b"x"], protocol=2))
    assert load_object_npy(tmp_path / "bare.pkl") == [1, b"x"]
    np.save(tmp_path / "numbers.npy", np.arange(3))
    assert load_object_npy(tmp_path / "numbers.npy").tolist() == [0, 1, 2]
    with pytest.raises(DatasetMissingError):
        load_object_npy(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"hello")
    with pytest.raises(DataFormatError, match="not a readable .npy or pickle"):
        load_object_npy(tmp_path / "junk.npy")


class _Call:
    """Pickles as a call of ``func(*args)``: what a malicious file does."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, object]:
    touch = f"touch {marker}"
    return {
        "os.system": _Call(os.system, touch),
        "subprocess.check_call": _Call(subprocess.check_call, ["touch", str(marker)]),
        "builtins.eval": _Call(eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Call(exec, f"open({str(marker)!r}, 'w').close()"),
        # getattr(__import__("os"), "system")(touch), written by hand: pickle cannot produce it
        "getattr chain": f"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V{touch}\ntR.".encode(),
        "_reconstruct of another class": _Call(np._core.multiarray._reconstruct, set, (0,), b"b"),
    }


@pytest.mark.parametrize("name", list(_payloads(Path("x"))))
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_restricted_unpickler_refuses_code_and_runs_nothing(tmp_path: Path, name: str, protocol: int) -> None:
    marker = tmp_path / "PWNED"
    payload = _payloads(marker)[name]
    data = payload if isinstance(payload, bytes) else pickle.dumps({b"Item": [payload]}, protocol=protocol)
    if isinstance(payload, bytes):  # the hand-written pickle does run code when unrestricted
        pickle.loads(data)
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UnsafePickleError, match="refused and nothing ran|admitted only for numpy.ndarray"):
        restricted_loads(data)
    assert not marker.exists()


def test_malicious_npy_is_refused_before_its_payload_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = malicious_npy(tmp_path / "evil.npy", marker)
    with pytest.raises(UnsafePickleError, match=r"evil.npy: the pickle asks for (posix|os)\.system"):
        load_object_npy(path)
    assert not marker.exists()
    buf = io.BytesIO()  # the Python 2 pickler of the fixtures writes the same attack
    Py2Pickler(buf, protocol=2).dump([_Call(os.system, f"touch {marker}")])
    with pytest.raises(UnsafePickleError):
        restricted_loads(buf.getvalue())
    assert not marker.exists()


# -- table files ---------------------------------------------------------------------------------------------


def test_read_table_csv_keeps_ids_as_text_and_names_lines(tmp_path: Path) -> None:
    path = tmp_path / "interactions.csv"
    path.write_text(
        "\ufeffuser_id, product_id ,timestamp,score\n"
        "u1,007,1600000000,1\nu1,8,2021-03-04T10:00:00+01:00,2.5\nu2,9,2021-03-04,\nu3,9,yesterday,3\n"
    )
    table = read_table(path, ("user_id", "product_id"), "interactions")
    assert table.text("product_id") == ["007", "8", "9", "9"]
    assert table.unix_seconds("timestamp").tolist() == [1600000000, 1614848400, 1614816000, -1]
    assert table.is_numeric("score") and np.isnan(table.numbers("score")[2])
    assert not table.is_numeric("user_id")
    assert table.where(0) == "interactions.csv line 2"
    needs = r"missing columns image, category; a products file needs product_id, image, category \(found: user_id,"
    with pytest.raises(DataFormatError, match=needs):
        read_table(path, ("product_id", "image", "category"), "products")
    with pytest.raises(DataFormatError, match=r"must be .csv or .parquet, got .xlsx"):
        read_table(tmp_path / "p.xlsx", ("product_id",), "products")


def test_read_table_parquet_keeps_types(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "product_id": [7, 8],
            "timestamp": pd.to_datetime(["2021-01-01", None]),
            "price": [1.5, None],
        }
    )
    frame.to_parquet(tmp_path / "i.parquet")
    table = read_table(tmp_path / "i.parquet", ("user_id", "product_id"), "interactions")
    assert table.text("product_id") == ["7", "8"] and table.where(1) == "i.parquet row 2"
    assert table.unix_seconds("timestamp").tolist() == [1609459200, -1]
    assert table.is_numeric("price") and not table.is_numeric("user_id")


# -- UT-Zap50K layout ------------------------------------------------------------------------------------------


def _tree(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), RED).save(root / rel)


def test_scan_utzap50k_layouts(tmp_path: Path) -> None:
    good = ["Shoes/Oxfords/Clarks/1.jpg", "Boots/Knee High/Frye/2.jpg"]
    _tree(tmp_path / "good", good)
    assert [p.relative_to(tmp_path / "good").as_posix() for p in scan_utzap50k(tmp_path / "good")] == sorted(good)
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataFormatError, match="does not look like UT-Zap50K"):
        scan_utzap50k(tmp_path / "photos")
    _tree(tmp_path / "nested" / "ut-zap50k-images", good)
    with pytest.raises(DataFormatError, match="did you mean .*ut-zap50k-images"):
        scan_utzap50k(tmp_path / "nested")
    _tree(tmp_path / "shallow", ["Shoes/Oxfords/1.jpg"])
    with pytest.raises(DataFormatError, match="Shoes/Oxfords/1.jpg is not at <Category>/<SubCategory>/<Brand>"):
        scan_utzap50k(tmp_path / "shallow")
    _tree(tmp_path / "extra", [*good, "Hats/Caps/X/1.jpg"])
    with pytest.raises(DataFormatError, match="unexpected folder 'Hats'"):
        scan_utzap50k(tmp_path / "extra")
