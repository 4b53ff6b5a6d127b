"""Prepare (build and save) and load the offline data set: catalogue, held-out queries,
simulated shoppers' interactions and their oracle."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from couturier.export.data.catalogue import Catalogue, build_catalogue
from couturier.export.data.errors import DataError, NotPreparedError
from couturier.export.data.fashion_mnist import FM_SHA256, load_fashion_mnist
from couturier.export.data.interactions import Interactions
from couturier.export.data.paths import default_data_dir
from couturier.export.data.shoppers import ORACLE_FILE, Oracle, simulate_shoppers

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
CATALOGUE_NAME = "catalogue"
HELDOUT_NAME = "heldout_catalogue"
INTERACTIONS_NAME = "interactions_simulated"
PREPARE_HINT = "run `couturier data prepare` first (optionally with --data-dir and --profile)"


@dataclass(frozen=True)
class Profile:
    """Sizes and seed of a prepared data set (None = every image of the split)."""

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


@dataclass
class PreparedData:
    """Everything :func:`prepare` writes, loaded."""

    data_dir: Path
    profile: Profile
    catalogue: Catalogue
    heldout: Catalogue
    interactions: Interactions
    oracle: Oracle
    manifest: dict[str, Any] = field(default_factory=dict)


def resolve_profile(profile: str | Profile) -> Profile:
    """A :class:`Profile` from its name ("demo", "full") or as given."""
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise DataError(f"unknown data profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def _files() -> list[str]:
    names = [CATALOGUE_NAME, HELDOUT_NAME, INTERACTIONS_NAME, ORACLE_FILE]
    return [f"{n}{ext}" for n in names for ext in (".npz", ".json")]


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _is_current(manifest: dict[str, Any] | None, folder: Path, profile: Profile) -> bool:
    return (
        manifest is not None
        and manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("profile") == asdict(profile)
        and manifest.get("fashion_mnist_sha256") == FM_SHA256
        and all((folder / name).is_file() for name in _files())
    )


def prepare(
    data_dir: Path | str | None = None,
    profile: str | Profile = "demo",
    *,
    progress: bool = True,
    fm_root: Path | str | None = None,
    force: bool = False,
) -> PreparedData:
    """Build and save the data set into ``data_dir`` (default :func:`default_data_dir`).

    Idempotent: when the folder already holds a data set with the same parameters it is loaded
    instead of rebuilt (``force=True`` rebuilds).
    """
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    prof = resolve_profile(profile)
    if not force and _is_current(_read_manifest(folder), folder, prof):
        return load_prepared(folder)
    started = time.perf_counter()
    fm = load_fashion_mnist(fm_root)
    catalogue = build_catalogue(
        fm,
        items_per_class=prof.items_per_class,
        image_size=prof.image_size,
        seed=prof.seed,
        split="train",
        progress=progress,
    )
    heldout = build_catalogue(
        fm,
        items_per_class=prof.heldout_per_class,
        image_size=prof.image_size,
        seed=prof.seed,
        split="test",
        progress=progress,
    )
    interactions, oracle = simulate_shoppers(catalogue, n_users=prof.n_users, seed=prof.seed, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an interrupted prepare never looks complete
    catalogue.save(folder, CATALOGUE_NAME)
    heldout.save(folder, HELDOUT_NAME)
    interactions.save(folder, INTERACTIONS_NAME)
    oracle.save(folder)
    manifest = {
        "format_version": FORMAT_VERSION,
        "profile": asdict(prof),
        "fashion_mnist_sha256": FM_SHA256,
        "files": _files(),
        "real": "images and garment classes: Fashion-MNIST (Debian package dataset-fashion-mnist)",
        "simulated": "garment colours, shoppers, purchases and the planted-taste oracle (evaluation only)",
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return PreparedData(folder, prof, catalogue, heldout, interactions, oracle, manifest)


def load_prepared(data_dir: Path | str | None = None) -> PreparedData:
    """Load what :func:`prepare` wrote; :class:`NotPreparedError` tells the user how to fix it."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    manifest = _read_manifest(folder)
    if manifest is None:
        raise NotPreparedError(f"no prepared data in {folder}: {PREPARE_HINT}")
    missing = [name for name in _files() if not (folder / name).is_file()]
    if missing:
        raise NotPreparedError(
            f"prepared data in {folder} is incomplete (missing {', '.join(missing)}): {PREPARE_HINT}"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise NotPreparedError(f"prepared data in {folder} has an old format: {PREPARE_HINT}")
    return PreparedData(
        data_dir=folder,
        profile=Profile(**manifest["profile"]),
        catalogue=Catalogue.load(folder, CATALOGUE_NAME),
        heldout=Catalogue.load(folder, HELDOUT_NAME),
        interactions=Interactions.load(folder, INTERACTIONS_NAME),
        oracle=Oracle.load(folder),
        manifest=manifest,
    )
