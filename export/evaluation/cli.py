"""``couturier judge train | samples``: train the judge of generated images and apply it to the GAN.

Kept light (typer only at import): ``couturier`` imports every sub-app when it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from couturier.services.cli import fail

judge_app = typer.Typer(
    help="The judge of generated images: a CNN trained on the real catalogue (never an optimisation objective).",
    no_args_is_help=True,
)

ProfileOpt = Annotated[str, typer.Option(help="demo (2-core CPU, ~3-4 min), tiny (seconds) or full (GPU).")]
RunsOpt = Annotated[Path, typer.Option(help="Runs folder; the judge lives in runs/<profile>/judge/.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Prepared data (default var/data or $COUTURIER_DATA_DIR); prepared for the profile when empty."),
]


DatasetOpt = Annotated[
    Path | None, typer.Option("--dataset", help="A dataset folder of your own; default: the simulated world.")
]


def _data(profile: str, dataset: Path | None, data_dir: Path | None) -> Any:
    """The dataset, or the simulated world in ``data_dir`` (prepared when missing); exit 2 on a data problem."""
    from couturier.export.data.errors import DataError
    from couturier.export.data.selection import select_data

    try:
        return select_data(profile, dataset=dataset, data_dir=data_dir)
    except DataError as exc:
        fail(str(exc))


@judge_app.command("train")
def train_cmd(
    profile: ProfileOpt = "demo", data_dir: DataDirOpt = None, dataset: DatasetOpt = None, runs: RunsOpt = Path("runs")
) -> None:
    """Train the judge on the catalogue, measure it on the held-out catalogue; write runs/<profile>/judge/."""
    from couturier.export.evaluation.judge import JUDGE_PROFILES, train_judge

    if profile not in JUDGE_PROFILES:
        fail(f"unknown profile {profile!r}; choose one of {', '.join(JUDGE_PROFILES)}")
    prepared = _data(profile, dataset, data_dir)
    result = train_judge(prepared, runs / profile / "judge", profile)
    m = result.metrics
    typer.echo(
        f"judge[{profile}] on {getattr(prepared, 'name', 'the simulated')} data: held-out accuracy {m['heldout_accuracy']:.3f} "
        f"({m['n_heldout']} items; {m['epochs_done']} epochs, {m['train_wall_s']} s) -> {result.run_dir}"
    )


@judge_app.command("samples")
def samples_cmd(
    profile: ProfileOpt = "demo",
    data_dir: DataDirOpt = None,
    dataset: DatasetOpt = None,
    runs: RunsOpt = Path("runs"),
    n_per_category: Annotated[int, typer.Option(help="GAN samples drawn per category.")] = 100,
    draws: Annotated[int, typer.Option(help="Random reference draws FID is averaged over.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the samples' z and of the reference draws.")] = 0,
) -> None:
    """Judge the profile's trained GAN against the real held-out items; write samples.json and samples.png."""
    from couturier.export.evaluation.judge import LabelledImages
    from couturier.export.evaluation.samples import judge_gan, judge_summary_lines

    root = runs / profile
    if not (root / "judge" / "checkpoint.pt").is_file():
        fail(f"no trained judge in {root / 'judge'}: run `couturier judge train --profile {profile}` first")
    if not (root / "gan" / "checkpoint.pt").is_file():
        fail(f"no trained GAN in {root / 'gan'}: run `couturier train --profile {profile} --only gan` first")
    if n_per_category < 2 or draws < 1:
        fail("--n-per-category must be >= 2 and --draws >= 1")
    prepared = _data(profile, dataset, data_dir)
    report, json_path, png = judge_gan(
        root, LabelledImages.of(prepared.heldout), n_per_category=n_per_category, draws=draws, seed=seed
    )
    for line in judge_summary_lines(report):
        typer.echo(line)
    typer.echo(f"wrote {json_path} and {png}")
