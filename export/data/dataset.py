"""The simulated demo data as a dataset folder: :func:`prepare` builds it, :func:`load_prepared` opens it.

The simulated world is one dataset among others (provenance ``simulated``): real Fashion-MNIST images
with simulated colours, simulated shoppers and their planted-taste oracle, written with
:class:`~couturier.export.data.dataset_writer.DatasetWriter`. :func:`prepare` never writes into a
folder holding anything else (a real dataset, a user's files): see :func:`prepare`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from couturier.export.data.catalogue import (
    CATEGORIES,
    COLOUR_ATTRIBUTE,
    COLOUR_NAMES,
    GARMENT_ATTRIBUTE,
    build_catalogue,
)
from couturier.export.data.dataset_folder import (
    MANIFEST_FILE,
    Dataset,
    is_legacy_prepared,
    open_dataset,
    read_manifest,
)
from couturier.export.data.dataset_writer import DatasetWriter
from couturier.export.data.errors import DataError
from couturier.export.data.fashion_mnist import FM_CLASSES, FM_SHA256, load_fashion_mnist
from couturier.export.data.paths import default_data_dir
from couturier.export.data.shoppers import simulate_shoppers

#: The command recorded as the importer of the simulated dataset (``importer`` starts with it).
PREPARER = "couturier data prepare"
#: Legacy prepared-data format (before dataset folders): recognised only to refuse or replace it.
log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
CATALOGUE_NAME = "catalogue"
HELDOUT_NAME = "heldout_catalogue"
INTERACTIONS_NAME = "interactions_simulated"
SOURCE = "Fashion-MNIST images (real) with SIMULATED colours and shoppers"
PROVENANCE_REAL = "images and garment classes: Fashion-MNIST (Debian package dataset-fashion-mnist)"
PROVENANCE_SIMULATED = "garment colours, shoppers, purchases and the planted-taste oracle (evaluation only)"

#: The opened dataset folder (kept under its old name for existing callers).
PreparedData = Dataset


@dataclass(frozen=True)
class Profile:
    """Sizes and seed of the simulated data set (None = every image of the split)."""

    name: str
    items_per_class: int | None
    heldout_per_class: int | None
    n_users: int
    image_size: int = 32
    seed: int = 0


PROFILES: dict[str, Profile] = {
    "demo": Profile("demo", items_per_class=1000, heldout_per_class=100, n_users=2000),
    "full": Profile("full", items_per_class=None, heldout_per_class=None, n_users=10000),
}


def resolve_profile(profile: str | Profile) -> Profile:
    """A :class:`Profile` from its name ("demo", "full") or as given."""
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise DataError(f"unknown data profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def _simulation(profile: Profile) -> dict[str, Any]:
    return {
        "profile": asdict(profile),
        "fashion_mnist_sha256": FM_SHA256,
        "real": PROVENANCE_REAL,
        "simulated": PROVENANCE_SIMULATED,
    }


def _is_legacy_simulated(folder: Path) -> bool:
    """An old-format prepared folder whose ``manifest.json`` says its images are Fashion-MNIST."""
    if not is_legacy_prepared(folder):
        return False
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(manifest, dict) and (
        "fashion_mnist_sha256" in manifest or "Fashion-MNIST" in str(manifest.get("real", ""))
    )


def _plan(folder: Path, profile: Profile, force: bool) -> str:
    """What :func:`prepare` may do with ``folder``: "open" (the same simulated data is there), "build"
    (empty), "replace" (its own simulated data, also in the old layout); else DataError."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder: choose another --data-dir")
    if not folder.exists() or not any(folder.iterdir()):
        return "build"
    if (folder / MANIFEST_FILE).is_file():
        try:
            manifest = read_manifest(folder)
        except DataError as exc:
            raise DataError(
                f"{folder} holds a dataset whose {MANIFEST_FILE} cannot be read ({exc}): couturier data prepare "
                "never overwrites a dataset it did not build; choose another --data-dir"
            ) from None
        provenance = manifest.get("provenance")
        if provenance != "simulated":
            raise DataError(
                f"{folder} holds a {provenance} dataset ({manifest.get('name')!r}, from {manifest.get('source')!r}): "
                f"couturier data prepare never writes into it. Use it as it is (--dataset {folder}), or prepare "
                "the simulated demo data into another folder (--data-dir)"
            )
        ours = str(manifest.get("importer", "")).startswith(PREPARER)
        if not ours and not force:
            raise DataError(
                f"{folder} holds a simulated dataset not built by `{PREPARER}` ({manifest.get('name')!r}): "
                "refusing to replace it; choose another --data-dir, or pass --force to replace it"
            )
        current = (manifest.get("simulation") or {}) == _simulation(profile)
        return "open" if ours and current and not force else "replace"
    if _is_legacy_simulated(folder):
        # couturier's own derived data in the old layout (rebuilt from Fashion-MNIST, same content)
        log.warning("rebuilding the simulated data in %s, prepared by an older couturier, as a dataset folder", folder)
        return "replace"
    raise DataError(
        f"{folder} is not empty and holds no simulated dataset: couturier data prepare writes only into an "
        "empty folder or its own simulated data, and never replaces anything else (--force included). "
        "Choose another --data-dir"
    )


def prepare(
    data_dir: Path | str | None = None,
    profile: str | Profile = "demo",
    *,
    progress: bool = True,
    fm_root: Path | str | None = None,
    force: bool = False,
) -> Dataset:
    """Build the simulated dataset folder in ``data_dir`` (default :func:`default_data_dir`) and open it.

    Idempotent: a folder already holding this profile's simulated data is opened, not rebuilt
    (``force=True`` rebuilds). Writes ONLY into a missing or empty folder, or over simulated data it
    built (or, with ``force``, any simulated dataset and old-format simulated data); any other folder,
    a real dataset above all, is a :class:`DataError` naming it, and nothing is written.
    """
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    prof = resolve_profile(profile)
    plan = _plan(folder, prof, force)
    if plan == "open":
        try:
            return open_dataset(folder)
        except DataError:
            plan = "replace"  # our own simulated data, damaged: rebuild it
    started = time.perf_counter()
    fm = load_fashion_mnist(fm_root)
    catalogue, heldout = (
        build_catalogue(
            fm, items_per_class=n, image_size=prof.image_size, seed=prof.seed, split=split, progress=progress
        )
        for n, split in ((prof.items_per_class, "train"), (prof.heldout_per_class, "test"))
    )
    interactions, oracle = simulate_shoppers(catalogue, n_users=prof.n_users, seed=prof.seed, progress=progress)
    with DatasetWriter(
        folder,
        image_size=prof.image_size,
        force=plan == "replace",
        categories=CATEGORIES,
        attribute_values={COLOUR_ATTRIBUTE: COLOUR_NAMES, GARMENT_ATTRIBUTE: FM_CLASSES},
    ) as writer:
        for cat, add in ((catalogue, writer.add_product), (heldout, writer.add_query)):
            for i in range(len(cat)):
                add(
                    str(cat.product_ids[i]),
                    CATEGORIES[int(cat.category[i])],
                    cat.images[i],
                    {
                        COLOUR_ATTRIBUTE: COLOUR_NAMES[int(cat.colour[i])],
                        GARMENT_ATTRIBUTE: FM_CLASSES[int(cat.fm_class[i])],
                    },
                )
        users, items, split = interactions.to_rows()
        writer.set_interactions(interactions.user_ids[users], catalogue.product_ids[items], split=split)
        writer.finish(
            name=f"simulated-{prof.name}",
            source=SOURCE,
            provenance="simulated",
            importer=f"{PREPARER} --profile {prof.name}",
            oracle=oracle,
            simulation=_simulation(prof),
            notes=[
                f"real: {PROVENANCE_REAL}",
                f"simulated: {PROVENANCE_SIMULATED}",
                "queries: the held-out Fashion-MNIST test split",
                f"built in {time.perf_counter() - started:.1f} s",
            ],
        )
    return open_dataset(folder)


def load_prepared(data_dir: Path | str | None = None) -> Dataset:
    """Open the dataset folder ``data_dir`` (default :func:`default_data_dir`), whatever its provenance."""
    return open_dataset(Path(data_dir) if data_dir is not None else default_data_dir())
