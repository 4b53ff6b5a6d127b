"""Where data lives: the prepared-data folder and the Fashion-MNIST install folder."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "COUTURIER_DATA_DIR"
FASHION_MNIST_DIR_ENV = "COUTURIER_FASHION_MNIST_DIR"
#: Where Debian's ``dataset-fashion-mnist`` package installs the gzip'd idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def default_data_dir() -> Path:
    """``$COUTURIER_DATA_DIR`` if set, else ``./var/data`` relative to the current directory."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else Path.cwd() / "var" / "data"


def fashion_mnist_dir() -> Path:
    """``$COUTURIER_FASHION_MNIST_DIR`` if set, else :data:`FASHION_MNIST_DIR`."""
    value = os.environ.get(FASHION_MNIST_DIR_ENV)
    return Path(value) if value else FASHION_MNIST_DIR
