"""``couturier train | export | eval``: the data scientist's commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from couturier.export.triton.model_config import InstanceKind

ProfileOpt = Annotated[
    str,
    typer.Option(
        help="demo (2-core CPU), quality (the shipped models: GPU minutes), full (GPU) or tiny (seconds; pipeline tests)."
    ),
]
RunsOpt = Annotated[Path, typer.Option(help="Runs folder; a profile writes runs/<profile>/.")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Prepared data (default var/data or $COUTURIER_DATA_DIR).")]
RepoOpt = Annotated[Path, typer.Option(help="Triton model repository to publish into.")]


DatasetOpt = Annotated[
    Path | None,
    typer.Option(
        "--dataset",
        help="A dataset folder of your own (`couturier data import-...`); read-only. "
        "Default: the simulated demo world in --data-dir.",
    ),
]


def _data(profile: str, dataset: Path | None, data_dir: Path | None, image_size: int | None = None) -> Any:
    """The data a command works on; a data problem ends the command with its message (exit 2)."""
    from couturier.export.data.errors import DataError
    from couturier.export.data.selection import select_data
    from couturier.services.cli import fail

    try:
        return select_data(profile, dataset=dataset, data_dir=data_dir, image_size=image_size)
    except DataError as exc:
        fail(str(exc))


def train(
    profile: ProfileOpt = "demo",
    runs: RunsOpt = Path("runs"),
    data_dir: DataDirOpt = None,
    dataset: DatasetOpt = None,
    image_size: Annotated[
        int | None,
        typer.Option(help="Train at this image side (32, 64, 128); default: the profile's, capped by the data's."),
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help="Train only these: dvbpr, gan, infogan, synthtriplet.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue each network from its resume.pt.")] = False,
    nproc: Annotated[
        int, typer.Option(help="Processes (GPUs) to train on with DistributedDataParallel, through torchrun.")
    ] = 1,
    max_seconds: Annotated[
        float | None,
        typer.Option(min=1.0, help="Stop each network after this many seconds (replaces the profile's cap)."),
    ] = None,
) -> None:
    """Train DVBPR, the conditional GAN, the InfoGAN retrieval encoder and SynthTriplet."""
    from couturier.export.pipeline import NETWORKS, train_all

    if nproc > 1:
        _train_distributed(nproc, profile, runs, data_dir, dataset, image_size, only or [], resume, max_seconds)
        return
    started = time.perf_counter()
    data = _data(profile, dataset, data_dir, image_size)
    typer.echo(f"training on {_describe(data)}")
    try:
        result = train_all(data, runs, profile, only=tuple(only or NETWORKS), resume=resume, max_seconds=max_seconds)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"trained into {result.root} in {time.perf_counter() - started:.0f} s: {json.dumps(result.wall_s)}")


def _train_distributed(
    nproc: int,
    profile: str,
    runs: Path,
    data_dir: Path | None,
    dataset: Path | None,
    image_size: int | None,
    only: list[str],
    resume: bool,
    max_seconds: float | None = None,
) -> None:
    """``couturier train`` on ``nproc`` processes: torchrun runs :mod:`couturier.export.training.distributed_train`."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args += ["-m", "couturier.export.training.distributed_train", "--profile", profile, "--runs", str(runs)]
    options = (("--data-dir", data_dir), ("--dataset", dataset), ("--image-size", image_size))
    for flag, value in (*options, ("--max-seconds", max_seconds)):
        if value is not None:
            args += [flag, str(value)]
    for network in only:
        args += ["--only", network]
    if resume:
        args.append("--resume")
    typer.echo("running: " + " ".join(args))
    code = subprocess.call(args)
    if code:
        raise typer.Exit(code=code)


def export(
    profile: ProfileOpt = "demo",
    runs: RunsOpt = Path("runs"),
    repo: RepoOpt = Path("var/model_repository"),
    kind: Annotated[str, typer.Option(help="KIND_CPU (local) or KIND_GPU (production Triton).")] = "KIND_CPU",
    user_vectors: Annotated[
        Path, typer.Option(help="Where the scoring service reads user vectors (item_encoder_v<N>.npz).")
    ] = Path("var/user_vectors"),
    instance_count: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODEL=N",
            help="Model instances, MODEL=N (repeatable) or N for every model. Default: a new model's "
            "serving default (gradient and loop models: 2), an existing model keeps its config's.",
        ),
    ] = None,
    threads: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODEL=N",
            help="onnxruntime threads per instance (intra_op_thread_count), MODEL=N (repeatable) or N for "
            "every model; 0 = one per core. Default as --instance-count (gradient and loop models on CPU: 1).",
        ),
    ] = None,
) -> None:
    """Export every trained network, the gradient models and the loop models to ONNX, check parity,
    publish new versions."""
    from couturier.export.pipeline import export_all, parse_per_model, publish_all, publish_user_vectors
    from couturier.services.cli import fail
    from couturier.services.common.models import ITEM_ENCODER

    kinds: dict[str, InstanceKind] = {"KIND_CPU": "KIND_CPU", "KIND_GPU": "KIND_GPU"}
    if kind not in kinds:
        fail(f"--kind must be KIND_CPU or KIND_GPU, not {kind!r}")
    try:
        counts = parse_per_model(instance_count or [], "--instance-count")
        per_instance = parse_per_model(threads or [], "--threads", minimum=0)
    except ValueError as exc:
        fail(str(exc))
    exported = export_all(runs / profile)
    failed = [name for name, report in exported.parity.items() if not report.get("ok")]
    versions = publish_all(
        exported.paths, repo, kind=kinds[kind], instance_counts=counts, intra_op_threads=per_instance, echo=typer.echo
    )
    typer.echo(f"published into {repo}: " + ", ".join(f"{n} v{v}" for n, v in versions.items()))
    vectors = publish_user_vectors(runs / profile, versions[ITEM_ENCODER], user_vectors)
    typer.echo(f"user vectors for {ITEM_ENCODER} v{versions[ITEM_ENCODER]}: {vectors}")
    if failed:
        typer.echo(
            f"error: parity check failed for {', '.join(failed)}; see {runs / profile / 'onnx' / 'parity.json'}",
            err=True,
        )
        raise typer.Exit(code=1)


def evaluate(
    profile: ProfileOpt = "demo",
    runs: RunsOpt = Path("runs"),
    data_dir: DataDirOpt = None,
    dataset: DatasetOpt = None,
    shoppers: Annotated[int, typer.Option(help="Shoppers (and alterations) the generation flows are judged on.")] = 50,
) -> None:
    """Retrieval evaluation, the judge's verdict on GAN samples, Design, Alter and GIGS, then the full report.

    The judge figures need a trained judge (`couturier judge train --profile P`) and exported models
    (`couturier export --profile P`); without them the report says what is missing.
    """
    from couturier.export.report import write_report
    from couturier.export.training.retrieval_eval import EFFNET_INPUT, run_retrieval_eval

    root = runs / profile
    prepared = _data(profile, dataset, data_dir, _trained_image_size(root))
    typer.echo(f"evaluating on {_describe(prepared)}")
    run_retrieval_eval(prepared, root / "infogan", root / "retrieval", effnet_input=EFFNET_INPUT.get(profile, 112))
    missing = [str(p) for p in (root / "judge" / "checkpoint.pt", root / "onnx" / "pref_grad.onnx") if not p.is_file()]
    if missing:
        typer.echo(f"judge figures skipped: {', '.join(missing)} missing (couturier judge train / couturier export)")
    else:
        from couturier.export.evaluation.generation import GenerationSettings, evaluate_generation
        from couturier.export.evaluation.judge import LabelledImages
        from couturier.export.evaluation.samples import judge_gan

        judge_gan(root, LabelledImages.of(prepared.heldout))
        evaluate_generation(root, prepared, GenerationSettings(n_shoppers=shoppers, n_alter=shoppers))
    typer.echo(f"report: {write_report(root)}")


def _describe(data: Any) -> str:
    kind = getattr(data, "provenance", "simulated")
    return f"{getattr(data, 'name', 'the demo world')} ({kind} data, {len(data.catalogue)} products)"


def _trained_image_size(root: Path) -> int | None:
    """The image side the run in ``root`` was trained at (None: not recorded)."""
    from couturier.export.pipeline import read_dataset_record

    size = read_dataset_record(root).get("image_size")
    return int(size) if size else None


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("export")(export)
    app.command("eval")(evaluate)
