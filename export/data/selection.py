"""Which data an offline command works on: a dataset folder given by ``--dataset``, else the simulated
demo world (prepared on demand in ``--data-dir``), at the training profile's image side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from couturier.export.data.errors import DataError

#: Image side each training profile works at, capped by the side the dataset stores: 32 on the CPU
#: demo (and the tiny test profile), 64 for real photos (``quality``), 128 on a GPU (``full``).
PROFILE_IMAGE_SIZE: dict[str, int] = {"tiny": 32, "demo": 32, "quality": 64, "full": 128}


def image_size_for(profile: str, stored: int) -> int:
    """The side ``profile`` trains at on a dataset stored at ``stored`` px (never upsampled)."""
    return min(PROFILE_IMAGE_SIZE.get(profile, 32), stored)


def select_data(
    profile: str,
    *,
    dataset: Path | None = None,
    data_dir: Path | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> Any:
    """The data a command uses (a :class:`~couturier.export.data.dataset_folder.Dataset`).

    ``dataset``: that folder, opened read-only at ``image_size`` (default: :func:`image_size_for`);
    resized copies go to the cache, never into the folder. Otherwise the simulated demo world in
    ``data_dir`` (``full`` profile: all of Fashion-MNIST), prepared when missing.
    """
    from couturier.export.data.dataset_folder import open_dataset

    if dataset is not None and data_dir is not None:
        raise DataError("give --dataset (your own data) or --data-dir (the simulated world), not both")
    if dataset is None:
        from couturier.export.data.dataset import prepare

        return prepare(data_dir, "full" if profile == "full" else "demo", progress=progress)
    opened = open_dataset(dataset)
    size = image_size if image_size is not None else image_size_for(profile, int(opened.manifest["image_size"]))
    return opened if size == int(opened.manifest["image_size"]) else open_dataset(dataset, image_size=size)
