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
    help="Data: real Fashion-MNIST images with simulated colours and simulated shoppers.",
    no_args_is_help=True,
)

DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Prepared-data folder (default $COUTURIER_DATA_DIR or ./var/data).")
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
    force: Annotated[bool, typer.Option(help="Rebuild even if the folder is up to date.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Build the catalogue, held-out queries and simulated shoppers (idempotent)."""
    from couturier.export.data.dataset import prepare

    started = time.perf_counter()
    data = prepare(data_dir, profile, progress=progress, force=force)
    typer.echo(
        f"prepared {data.profile.name} data in {data.data_dir}: {len(data.catalogue)} items, "
        f"{len(data.heldout)} held-out queries, {data.interactions.n_users} simulated shoppers, "
        f"{data.interactions.n_train} train purchases ({time.perf_counter() - started:.1f} s)"
    )


@data_app.command("stats")
@_clean_errors
def stats_cmd(
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for data_stats.json and data_stats.md.")] = Path("var/reports"),
) -> None:
    """Write statistics of the prepared data (real vs simulated labelled)."""
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


def _data_dir(value: Path | None) -> Path:
    from couturier.export.data.paths import default_data_dir

    return value if value is not None else default_data_dir()


@data_app.command("import-dvbpr")
@_clean_errors
def import_dvbpr_cmd(
    path: Annotated[Path, typer.Argument(help="DVBPR Amazon .npy file (e.g. AmazonFashion6ImgPartitioned.npy).")],
    out: Annotated[
        Path, typer.Option(help="Folder for the imported catalogue, interactions and contact sheet.")
    ] = Path("var/data/dvbpr_amazon"),
    image_size: Annotated[int, typer.Option(help="Resize product images to this many pixels per side.")] = 64,
) -> None:
    """Import a REAL DVBPR Amazon data set: catalogue + per-user train/validation/test purchases."""
    from couturier.export.data.dvbpr_amazon import load_dvbpr_amazon
    from couturier.export.data.report import write_contact_sheet

    data = load_dvbpr_amazon(path, image_size=image_size, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    data.catalogue.save(out, "catalogue")
    data.interactions.save(out, "interactions")
    sheet = write_contact_sheet(
        data.catalogue, out / "contact_sheet.png", title=f"DVBPR Amazon data from {path.name} (real)"
    )
    typer.echo(
        f"imported {len(data.catalogue)} items and {data.interactions.n_users} users "
        f"({data.interactions.n_train} train purchases) into {out}; contact sheet {sheet}"
    )


@data_app.command("import-utzap50k")
@_clean_errors
def import_utzap50k_cmd(
    root: Annotated[Path, typer.Argument(help="UT-Zap50K image folder (<Category>/<SubCategory>/<Brand>/<id>.jpg).")],
    out: Annotated[Path, typer.Option(help="Folder for the imported catalogue and contact sheet.")] = Path(
        "var/data/utzap50k"
    ),
    image_size: Annotated[int, typer.Option(help="Resize images to this many pixels per side.")] = 64,
    limit: Annotated[int | None, typer.Option(help="Import only the first N images (sorted path order).")] = None,
) -> None:
    """Import REAL UT-Zap50K shoe images as a catalogue (no interactions ship with it)."""
    from couturier.export.data.report import write_contact_sheet
    from couturier.export.data.utzap50k import load_utzap50k

    catalogue = load_utzap50k(root, image_size=image_size, limit=limit, progress=True).to_catalogue()
    out.mkdir(parents=True, exist_ok=True)
    catalogue.save(out, "catalogue")
    sheet = write_contact_sheet(catalogue, out / "contact_sheet.png", title=f"UT-Zap50K from {root} (real)")
    typer.echo(f"imported {len(catalogue)} images into {out}; contact sheet {sheet}")
