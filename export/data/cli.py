"""``couturier data ...``: prepare the offline data set, write its statistics and contact sheet."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from couturier.export.data.errors import DataError

P = ParamSpec("P")
R = TypeVar("R")

data_app = typer.Typer(
    help="Data: dataset folders (import, validate, stats) and the simulated demo data (prepare).",
    no_args_is_help=True,
)

DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Dataset folder (default $COUTURIER_DATA_DIR or ./var/data).")
]


def _clean_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a DataError into a one-line message and exit code 2 (no traceback)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DataError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper


@data_app.command("prepare")
@_clean_errors
def prepare_cmd(
    data_dir: DataDirOpt = None,
    profile: Annotated[str, typer.Option(help="demo (10,000 items, 2,000 shoppers) or full (all 60,000).")] = "demo",
    force: Annotated[
        bool, typer.Option(help="Rebuild even if up to date (replaces simulated data only, never a real dataset).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Build the simulated demo dataset folder (idempotent; never writes over other data)."""
    from couturier.export.data.dataset import prepare

    started = time.perf_counter()
    data = prepare(data_dir, profile, progress=progress, force=force)
    inter = data.interactions
    assert data.profile is not None and inter is not None  # the simulated world has both
    typer.echo(
        f"prepared {data.profile.name} data in {data.data_dir}: {len(data.catalogue)} items, "
        f"{len(data.heldout)} held-out queries, {inter.n_users} simulated shoppers, "
        f"{inter.n_train} train purchases ({time.perf_counter() - started:.1f} s)"
    )


@data_app.command("stats")
@_clean_errors
def stats_cmd(
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for data_stats.json and data_stats.md.")] = Path("var/reports"),
) -> None:
    """Write statistics of a dataset folder (real vs simulated labelled)."""
    from couturier.export.data.report import write_stats

    for path in write_stats(_data_dir(data_dir), out):
        typer.echo(str(path))


@data_app.command("sheet")
@_clean_errors
def sheet_cmd(
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("var/reports/contact_sheet.png"),
) -> None:
    """Write a contact sheet PNG of the catalogue (rows = categories)."""
    from couturier.export.data.dataset import load_prepared
    from couturier.export.data.report import write_contact_sheet

    typer.echo(str(write_contact_sheet(load_prepared(_data_dir(data_dir)).catalogue, out)))


@data_app.command("validate")
def validate_cmd(
    path: Annotated[Path, typer.Argument(help="Dataset folder to check (dataset.json, tables, images, checksums).")],
) -> None:
    """Check a dataset folder: exit 0 with a one-line summary, or exit 2 listing every problem."""
    from couturier.export.data.dataset_folder import dataset_summary, read_manifest, validate_dataset

    problems = validate_dataset(path)
    if problems:
        typer.echo(f"{path}: NOT a valid dataset ({len(problems)} problems):")
        for problem in problems:
            typer.echo(f"  - {problem}")
        raise typer.Exit(code=2)
    typer.echo(f"{path}: valid {dataset_summary(read_manifest(path))}")


def _data_dir(value: Path | None) -> Path:
    from couturier.export.data.paths import default_data_dir

    return value if value is not None else default_data_dir()


OutOpt = Annotated[Path, typer.Option("--out", help="New dataset folder (must not exist or be empty, unless --force).")]
ImageSizeOpt = Annotated[int, typer.Option(help="Store product images at this many pixels per side.")]
SkipInvalidOpt = Annotated[
    bool,
    typer.Option(
        "--skip-invalid", help="Import the rest when rows are bad, and record what was skipped in the manifest."
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a non-empty --out once the new dataset is complete.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]


def _echo_import(folder: Path, started: float) -> None:
    from couturier.export.data.importers.summary import import_summary

    for line in import_summary(folder, time.perf_counter() - started):
        typer.echo(line)


@data_app.command("import-dvbpr")
@_clean_errors
def import_dvbpr_cmd(
    path: Annotated[
        Path, typer.Argument(help="DVBPR Amazon/Tradesy .npy file (e.g. AmazonFashion6ImgPartitioned.npy).")
    ],
    out: OutOpt,
    categories: Annotated[
        str | None,
        typer.Option(help="Category names in the file's index order, comma-separated (default category-<c>)."),
    ] = None,
    image_size: ImageSizeOpt = 64,
    skip_invalid: SkipInvalidOpt = False,
    force: ForceOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Import a DVBPR .npy (a pickle, read with a restricted unpickler): products by asin, the file's own split."""
    from couturier.export.data.importers import import_dvbpr

    started = time.perf_counter()
    names = [name.strip() for name in categories.split(",")] if categories is not None else None
    folder = import_dvbpr(
        path,
        out,
        image_size=image_size,
        category_names=names,
        skip_invalid=skip_invalid,
        force=force,
        progress=progress,
    )
    _echo_import(folder, started)


@data_app.command("import-table")
@_clean_errors
def import_table_cmd(
    products: Annotated[
        Path,
        typer.Option(help="Products CSV/Parquet: product_id, image (path), category, further columns = attributes."),
    ],
    out: OutOpt,
    interactions: Annotated[
        Path | None, typer.Option(help="Interactions CSV/Parquet: user_id, product_id, optional timestamp.")
    ] = None,
    image_size: ImageSizeOpt = 64,
    seed: Annotated[int, typer.Option(help="Seed of the split draw when the interactions have no timestamps.")] = 0,
    skip_invalid: SkipInvalidOpt = False,
    force: ForceOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Import a shop's tables: products with images, categories and attributes, and their purchases."""
    from couturier.export.data.importers import import_table

    started = time.perf_counter()
    folder = import_table(
        products,
        interactions,
        out,
        image_size=image_size,
        seed=seed,
        skip_invalid=skip_invalid,
        force=force,
        progress=progress,
    )
    _echo_import(folder, started)


@data_app.command("import-utzap50k")
@_clean_errors
def import_utzap50k_cmd(
    root: Annotated[Path, typer.Argument(help="UT-Zap50K image folder (<Category>/<SubCategory>/<Brand>/<id>.jpg).")],
    out: OutOpt,
    limit: Annotated[int | None, typer.Option(help="Import only the first N images (sorted path order).")] = None,
    image_size: ImageSizeOpt = 64,
    skip_invalid: SkipInvalidOpt = False,
    force: ForceOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Import UT-Zap50K shoe photos as a catalogue only (it has no purchases: training needs interactions from elsewhere)."""
    from couturier.export.data.importers import import_utzap50k

    started = time.perf_counter()
    folder = import_utzap50k(
        root, out, image_size=image_size, limit=limit, skip_invalid=skip_invalid, force=force, progress=progress
    )
    _echo_import(folder, started)
