"""``couturier train | export | eval``: the data scientist's commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from couturier.export.data.dataset import PreparedData
    from couturier.export.triton.model_config import InstanceKind

ProfileOpt = Annotated[
    str, typer.Option(help="demo (2-core CPU, ~20 min), full (GPU) or tiny (seconds; pipeline tests).")
]
RunsOpt = Annotated[Path, typer.Option(help="Runs folder; a profile writes runs/<profile>/.")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Prepared data (default var/data or $COUTURIER_DATA_DIR).")]
RepoOpt = Annotated[Path, typer.Option(help="Triton model repository to publish into.")]


def _prepared(data_dir: Path | None, profile: str) -> PreparedData:
    from couturier.export.data.dataset import prepare

    return prepare(data_dir, "full" if profile == "full" else "demo", progress=True)


def train(
    profile: ProfileOpt = "demo",
    runs: RunsOpt = Path("runs"),
    data_dir: DataDirOpt = None,
    only: Annotated[list[str] | None, typer.Option(help="Train only these: dvbpr, gan, infogan, synthtriplet.")] = None,
) -> None:
    """Train DVBPR, the conditional GAN, the InfoGAN retrieval encoder and SynthTriplet."""
    from couturier.export.pipeline import NETWORKS, train_all

    started = time.perf_counter()
    try:
        result = train_all(_prepared(data_dir, profile), runs, profile, only=tuple(only or NETWORKS))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"trained into {result.root} in {time.perf_counter() - started:.0f} s: {json.dumps(result.wall_s)}")


def export(
    profile: ProfileOpt = "demo",
    runs: RunsOpt = Path("runs"),
    repo: RepoOpt = Path("var/model_repository"),
    kind: Annotated[str, typer.Option(help="KIND_CPU (local) or KIND_GPU (production Triton).")] = "KIND_CPU",
    user_vectors: Annotated[
        Path, typer.Option(help="Where the scoring service reads user vectors (item_encoder_v<N>.npz).")
    ] = Path("var/user_vectors"),
) -> None:
    """Export every trained network and the gradient models to ONNX, check parity, publish new versions."""
    from couturier.export.pipeline import export_all, publish_all, publish_user_vectors
    from couturier.services.cli import fail
    from couturier.services.common.models import ITEM_ENCODER

    kinds: dict[str, InstanceKind] = {"KIND_CPU": "KIND_CPU", "KIND_GPU": "KIND_GPU"}
    if kind not in kinds:
        fail(f"--kind must be KIND_CPU or KIND_GPU, not {kind!r}")
    exported = export_all(runs / profile)
    failed = [name for name, report in exported.parity.items() if not report.get("ok")]
    versions = publish_all(exported.paths, repo, kind=kinds[kind])
    typer.echo(f"published into {repo}: " + ", ".join(f"{n} v{v}" for n, v in versions.items()))
    vectors = publish_user_vectors(runs / profile, versions[ITEM_ENCODER], user_vectors)
    typer.echo(f"user vectors for {ITEM_ENCODER} v{versions[ITEM_ENCODER]}: {vectors}")
    if failed:
        typer.echo(
            f"error: parity check failed for {', '.join(failed)}; see {runs / profile / 'onnx' / 'parity.json'}",
            err=True,
        )
        raise typer.Exit(code=1)


def evaluate(profile: ProfileOpt = "demo", runs: RunsOpt = Path("runs"), data_dir: DataDirOpt = None) -> None:
    """Retrieval evaluation (InfoGAN-D vs pixels vs EfficientNet-Lite0), then the full report."""
    from couturier.export.report import write_report
    from couturier.export.training.retrieval_eval import EFFNET_INPUT, run_retrieval_eval

    root = runs / profile
    run_retrieval_eval(
        _prepared(data_dir, profile), root / "infogan", root / "retrieval", effnet_input=EFFNET_INPUT.get(profile, 112)
    )
    typer.echo(f"report: {write_report(root)}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("export")(export)
    app.command("eval")(evaluate)
