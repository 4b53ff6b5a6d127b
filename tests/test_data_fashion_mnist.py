"""Real Fashion-MNIST loader: counts, shapes, checksums and clear errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from couturier.export.data.errors import DataError, DatasetCorruptError, DatasetMissingError
from couturier.export.data.fashion_mnist import (
    FM_CLASSES,
    FM_FILES,
    FM_SHA256,
    load_fashion_mnist,
    parse_idx,
    sha256_file,
)
from couturier.export.data.paths import FASHION_MNIST_DIR, default_data_dir, fashion_mnist_dir


def test_real_fashion_mnist_counts_shapes_dtypes() -> None:
    fm = load_fashion_mnist()
    assert fm.train.images.shape == (60000, 28, 28) and fm.test.images.shape == (10000, 28, 28)
    assert fm.train.images.dtype == np.uint8 and fm.train.labels.dtype == np.int64
    assert np.bincount(fm.train.labels).tolist() == [6000] * 10
    assert np.bincount(fm.test.labels).tolist() == [1000] * 10
    assert len(FM_CLASSES) == 10 and FM_CLASSES[0] == "T-shirt/top" and FM_CLASSES[9] == "Ankle boot"
    # background is black (0) in Fashion-MNIST; garments are bright
    assert fm.train.images[:, 0, 0].mean() < 5 and fm.train.images.max() == 255
    assert not fm.train.images.flags.writeable


def test_recorded_checksums_match_installed_files() -> None:
    for name, digest in FM_SHA256.items():
        assert sha256_file(FASHION_MNIST_DIR / name) == digest


def test_parse_idx_header() -> None:
    raw = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    assert parse_idx(raw).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DatasetCorruptError, match="magic"):
        parse_idx(b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(DatasetCorruptError, match="header says"):
        parse_idx(raw[:-1])


def test_missing_dir_names_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError) as err:
        load_fashion_mnist(tmp_path / "nope")
    assert "dataset-fashion-mnist" in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)


def test_missing_file_is_named(tmp_path: Path) -> None:
    for name in FM_SHA256:
        if name != "t10k-labels-idx1-ubyte.gz":
            (tmp_path / name).symlink_to(FASHION_MNIST_DIR / name)
    with pytest.raises(DatasetMissingError, match="t10k-labels-idx1-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def _copy_all(dst: Path) -> None:
    for name in FM_SHA256:
        shutil.copyfile(FASHION_MNIST_DIR / name, dst / name)


def test_corrupted_gz_fails_checksum_naming_file(tmp_path: Path) -> None:
    _copy_all(tmp_path)
    target = tmp_path / "train-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetCorruptError, match=r"train-labels-idx1-ubyte\.gz: sha256 mismatch"):
        load_fashion_mnist(tmp_path)


def test_corrupt_content_without_checksum_is_clear(tmp_path: Path) -> None:
    _copy_all(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetCorruptError, match="t10k-labels-idx1-ubyte.gz: not a valid gzip"):
        load_fashion_mnist(tmp_path, verify_checksums=False)
    # valid gzip, wrong number of labels
    header = bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + bytes(5)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header))
    with pytest.raises(DatasetCorruptError, match="expected 10000 labels"):
        load_fashion_mnist(tmp_path, verify_checksums=False)


def test_paths_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COUTURIER_DATA_DIR", raising=False)
    monkeypatch.delenv("COUTURIER_FASHION_MNIST_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_data_dir() == tmp_path / "var" / "data"
    assert fashion_mnist_dir() == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setenv("COUTURIER_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("COUTURIER_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    assert default_data_dir() == tmp_path / "d"
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "fm")):
        load_fashion_mnist()
    assert set(FM_FILES) == {"train", "test"}
