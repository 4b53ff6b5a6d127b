"""Data layer: real Fashion-MNIST images, a simulated-colour catalogue, simulated shoppers.

Real: the Fashion-MNIST images and classes (Debian package ``dataset-fashion-mnist``), and the
optional loaders for DVBPR's Amazon ``.npy`` (:mod:`.dvbpr_amazon`) and UT-Zap50K folders
(:mod:`.utzap50k`). Simulated (and labelled so everywhere): the garment colours of the catalogue,
the shoppers, their purchases and the planted-taste oracle (evaluation only).
"""

from __future__ import annotations

from couturier.export.data.catalogue import CATEGORIES, COLOUR_NAMES, Catalogue, build_catalogue
from couturier.export.data.dataset import PROFILES, PreparedData, Profile, load_prepared, prepare
from couturier.export.data.errors import (
    DataError,
    DataFormatError,
    DatasetCorruptError,
    DatasetMissingError,
    NotPreparedError,
)
from couturier.export.data.fashion_mnist import FM_CLASSES, FashionMNIST, load_fashion_mnist
from couturier.export.data.interactions import Interactions
from couturier.export.data.paths import default_data_dir, fashion_mnist_dir
from couturier.export.data.shoppers import Oracle, simulate_shoppers

__all__ = [
    "CATEGORIES",
    "COLOUR_NAMES",
    "FM_CLASSES",
    "PROFILES",
    "Catalogue",
    "DataError",
    "DataFormatError",
    "DatasetCorruptError",
    "DatasetMissingError",
    "FashionMNIST",
    "Interactions",
    "NotPreparedError",
    "Oracle",
    "PreparedData",
    "Profile",
    "build_catalogue",
    "default_data_dir",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "load_prepared",
    "prepare",
    "simulate_shoppers",
]
