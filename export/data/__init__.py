"""Data layer: dataset folders (couturier's own format), their importers, and the simulated demo world.

A dataset folder (:mod:`.dataset_folder`, written by :mod:`.dataset_writer`, format in
``docs/datasets.md``) holds a catalogue of products with images, categories and attributes, and
optionally interactions; its provenance is ``real`` or ``simulated``. The simulated world
(:func:`prepare`) is one such dataset: real Fashion-MNIST images and classes with SIMULATED colours,
shoppers, purchases and the planted-taste oracle (evaluation only).
"""

from __future__ import annotations

from couturier.export.data.catalogue import CATEGORIES, COLOUR_NAMES, Catalogue, build_catalogue
from couturier.export.data.dataset import PROFILES, PreparedData, Profile, load_prepared, prepare
from couturier.export.data.dataset_folder import (
    Dataset,
    NotADatasetError,
    dataset_fingerprint,
    open_dataset,
    validate_dataset,
)
from couturier.export.data.dataset_writer import DatasetWriter, split_interactions
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
    "Dataset",
    "DatasetCorruptError",
    "DatasetMissingError",
    "DatasetWriter",
    "FashionMNIST",
    "Interactions",
    "NotADatasetError",
    "NotPreparedError",
    "Oracle",
    "PreparedData",
    "Profile",
    "build_catalogue",
    "dataset_fingerprint",
    "default_data_dir",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "load_prepared",
    "open_dataset",
    "prepare",
    "simulate_shoppers",
    "split_interactions",
    "validate_dataset",
]
