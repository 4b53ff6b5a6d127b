"""Offline subcommands of ``couturier``: data, train, export, eval, judge, models, triton, index, demo and bench.

Registered into the serving CLI (``couturier.services.cli``) through the ``couturier.cli`` entry point,
so the serving package never imports this one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from couturier.services.cli import fail
from couturier.services.common.errors import CouturierError


def demo(
    out: Annotated[Path | None, typer.Option(help="Where the report goes (default runs/<profile>).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (default var/data or COUTURIER_DATA_DIR).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Models to serve from runs/<profile>: quality (the shipped models; the default), or with --train "
            "demo (2-core CPU; the default with --train), quality or full (GPU)."
        ),
    ] = None,
    train: Annotated[
        bool,
        typer.Option(
            "--train", help="Train the networks on this machine when runs/<profile> lacks them (no shipped models)."
        ),
    ] = False,
    shipped: Annotated[
        Path | None, typer.Option(help="Shipped models to install (default export/shipped/<profile>).")
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset",
            help="Run on a dataset folder of your own (`couturier data import-...`; read-only): trains its models "
            "here (default profile demo) into runs/datasets/<name>-<fingerprint>/, then serves them.",
        ),
    ] = None,
    store: Annotated[
        str,
        typer.Option(
            help="Vector store of the stack: lite (a milvus-lite file per service, zero setup) or server (the "
            "local Milvus server on 127.0.0.1:19530, started or reused; docs/vector-store.md)."
        ),
    ] = "lite",
) -> None:
    """The main job on the embedded default: data, models, the whole stack, every flow, a report.

    By default serves the shipped quality models, installed from export/shipped/quality when runs/quality lacks them.

    Installing checks every file's sha256 and that the prepared data is the data they were trained on.

    --train trains missing models on this machine instead (the demo profile unless --profile says otherwise).

    Without --train and with nothing shipped, the demo refuses before doing any work.

    Then exports and publishes only what is missing, and runs every flow against a local Triton and the services.

    The report goes to <out>/demo_report.html.
    """
    from couturier.export.tools.demo import run_demo

    if store not in ("lite", "server"):
        fail(f"--store must be lite or server, got {store!r}")
    try:
        report = run_demo(
            out,
            data_dir=data_dir,
            profile=profile,
            train=train,
            shipped=shipped,
            dataset=dataset,
            store="server" if store == "server" else "lite",
        )
    except CouturierError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted (the serving stack, if it had started, was stopped)", err=True)
        raise typer.Exit(code=130) from None
    failed = json.loads((report.parent / "demo_report.json").read_text()).get("errors", {})
    for section, message in failed.items():
        typer.echo(f"error: {section}: {message}", err=True)
    typer.echo(f"report: {report}")
    if failed:
        raise typer.Exit(code=1)


def bench(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Where bench.json and bench.md go.")] = Path("runs/bench"),
    orchestrator: Annotated[
        str | None, typer.Option(help="Attach: orchestrator host:port (give all four services).")
    ] = None,
    scoring: Annotated[str | None, typer.Option(help="Attach: scoring host:port.")] = None,
    latent: Annotated[str | None, typer.Option(help="Attach: latent host:port.")] = None,
    retrieval: Annotated[str | None, typer.Option(help="Attach: retrieval host:port.")] = None,
    triton: Annotated[
        str | None, typer.Option(help="Attach: Triton gRPC host:port (backend comparison, statistics).")
    ] = None,
    repo_dir: Annotated[Path, typer.Option(help="Model repository (Triton and in-process onnxruntime).")] = Path(
        "var/model_repository"
    ),
    user_vectors_dir: Annotated[Path, typer.Option(help="Published user vectors.")] = Path("var/user_vectors"),
    data_dir: Annotated[
        Path | None, typer.Option(help="Prepared data (default var/data or COUTURIER_DATA_DIR).")
    ] = None,
    index_limit: Annotated[int, typer.Option(help="Catalogue products indexed and used in requests.")] = 2000,
    index: Annotated[
        bool | None,
        typer.Option(
            "--index/--no-index", help="Index the catalogue subset first (default: only for a stack the bench starts)."
        ),
    ] = None,
    concurrency: Annotated[
        str, typer.Option("--concurrency", "--levels", help="Comma-separated concurrency levels.")
    ] = "1,16,64",
    duration_s: Annotated[float, typer.Option(help="Seconds of closed-loop load per RPC and level.")] = 5.0,
    heavy_calls: Annotated[
        int, typer.Option(help="Latent/orchestrator-design RPCs: at most max(this, concurrency) calls per level.")
    ] = 8,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Substring of the RPC names to run; repeat it or separate with commas (default all)."),
    ] = None,
    compare_calls: Annotated[
        int, typer.Option(help="Calls per model and batch for Triton vs onnxruntime (0: skip).")
    ] = 50,
    timeout_s: Annotated[float, typer.Option(help="Deadline of each RPC.")] = 120.0,
    store: Annotated[
        str,
        typer.Option(
            help="Vector store of the stack the bench starts: lite (milvus-lite, zero setup), server (a local "
            "Milvus standalone server) or both (lite, then server, in one run; RPCs keyed <store>/<rpc>). "
            "The issue 11 acceptance figures use server or both."
        ),
    ] = "lite",
    milvus_uri: Annotated[
        str, typer.Option(help="--store server/both: a running Milvus server (default: start a local one).")
    ] = "",
    limit_duration_s: Annotated[
        float,
        typer.Option(
            help="In-process limit of each RPC (the same work without services, Triton or gRPC): seconds for "
            "its p50 and for its throughput measurement (0: no limits)."
        ),
    ] = 3.0,
    limit_threads: Annotated[
        int, typer.Option(help="Worker threads of the limit's throughput (default: one per core).")
    ] = 0,
) -> None:
    """Latency (p50/p90/p99) and throughput of every RPC at each concurrency, its distance to the in-process
    limit measured in the same run, and Triton vs onnxruntime per model.

    `couturier bench data` measures the data path instead: import and training on a generated shop.
    """
    if ctx.invoked_subcommand is not None:
        return  # `couturier bench data`: that command runs, not the service benchmark
    import os

    from couturier.export.tools.bench import BenchOptions
    from couturier.export.tools.bench import bench as run_bench

    attach = {"orchestrator": orchestrator, "scoring": scoring, "latent": latent, "retrieval": retrieval}
    given = {k: v for k, v in attach.items() if v}
    if given and len(given) != len(attach):
        fail(f"attaching needs all four services; missing --{', --'.join(k for k in attach if k not in given)}")
    try:
        levels = tuple(int(c) for c in concurrency.split(",") if c.strip())
    except ValueError:
        fail(f"--concurrency must be comma-separated integers, got {concurrency!r}")
    if store not in ("lite", "server", "both"):
        fail(f"--store must be lite, server or both, got {store!r}")
    if store == "both" and given:
        fail("--store both starts its own two stacks; it cannot attach to running services")
    options = BenchOptions(
        out=out,
        targets=given,
        triton_url=triton or "",
        repo_dir=repo_dir,
        user_vectors_dir=user_vectors_dir,
        data_dir=data_dir or Path(os.environ.get("COUTURIER_DATA_DIR", "var/data")),
        index_limit=index_limit,
        index=index,
        levels=levels,
        duration_s=duration_s,
        heavy_calls=heavy_calls,
        only=tuple(part.strip() for value in only or [] for part in value.split(",") if part.strip()),
        compare_calls=compare_calls,
        timeout_s=timeout_s,
        store=store,  # type: ignore[arg-type]  # checked above
        milvus_uri=milvus_uri,
        limit_duration_s=limit_duration_s,
        limit_threads=limit_threads,
    )
    json_path, md_path = asyncio.run(run_bench(options, echo=typer.echo))
    typer.echo(f"results: {md_path} and {json_path}")


def bench_data(
    out: Annotated[Path, typer.Option(help="Where bench_data.json and bench_data.md go.")] = Path("runs/bench-data"),
    work: Annotated[
        Path | None,
        typer.Option(
            help="Generated shop, imported datasets and training runs (default <out>/work; the photos are reused)."
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Products in the generated shop (the largest catalogue).")] = 50_000,
    sizes: Annotated[
        str, typer.Option(help="Comma-separated catalogue sizes imported and trained on (default 10000 and --n).")
    ] = "",
    image_size: Annotated[int, typer.Option(help="Image resolution imported and trained at.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the generated shop.")] = 0,
    workers: Annotated[
        int | None, typer.Option(help="Image-decoding processes of the import (default: the importer's).")
    ] = None,
    dvbpr_seconds: Annotated[float, typer.Option(help="DVBPR: one epoch or this many seconds of steps.")] = 60.0,
    gan_steps: Annotated[int, typer.Option(help="Conditional GAN steps per catalogue size.")] = 100,
    gan_finish: Annotated[
        bool,
        typer.Option(
            help="Include the GAN's finalisation (standing BatchNorm statistics, sample grid, metrics); "
            "--no-gan-finish stops after its steps (quick runs)."
        ),
    ] = True,
    repeats: Annotated[int, typer.Option(help="Repeat each import and training measurement (medians).")] = 1,
    malloc_mmap_threshold: Annotated[
        int | None,
        typer.Option(
            help="MALLOC_MMAP_THRESHOLD_ (bytes) for the training processes, e.g. 65536: glibc then returns freed "
            "memory at once, so peak RSS shows live memory (default: glibc's own, as `couturier train` runs)."
        ),
    ] = None,
    regenerate: Annotated[bool, typer.Option(help="Generate the shop's photos again even if present.")] = False,
) -> None:
    """Import images/s, training images/s and peak RSS of import and training on a generated shop (64 px).

    Generates N products (photo-like JPEGs, categories, colours, purchases with timestamps), imports each
    catalogue size with `import-table`, trains DVBPR and the GAN (demo profile) on each, each in its own
    process; reports against the targets (import >= 1,000 images/s, training RSS < 3 GB at any size).
    """
    from couturier.export.data.errors import DataError
    from couturier.export.tools.bench_data import BenchDataOptions
    from couturier.export.tools.bench_data import bench_data as run_bench_data

    try:
        chosen = tuple(int(v) for v in sizes.split(",") if v.strip())
    except ValueError:
        fail(f"--sizes must be comma-separated integers, got {sizes!r}")
    options = BenchDataOptions(
        out=out,
        work=work,
        n=n,
        sizes=chosen,
        image_size=image_size,
        seed=seed,
        workers=workers,
        dvbpr_seconds=dvbpr_seconds,
        gan_steps=gan_steps,
        gan_finish=gan_finish,
        repeats=repeats,
        malloc_mmap_threshold=malloc_mmap_threshold,
        regenerate=regenerate,
    )
    try:
        json_path, md_path = run_bench_data(options, echo=typer.echo)
    except DataError as exc:
        fail(str(exc))
    typer.echo(f"results: {md_path} and {json_path}")


models_app = typer.Typer(
    help="Trained models shipped with the repository (export/shipped/<profile>): write, verify, install.",
    no_args_is_help=True,
)


@models_app.command("ship")
def models_ship(
    profile: Annotated[str, typer.Option(help="The trained profile to ship (runs/<profile>).")] = "quality",
    runs: Annotated[Path, typer.Option(help="Runs folder holding runs/<profile>/ (and its judge/).")] = Path("runs"),
    dest: Annotated[Path | None, typer.Option(help="Shipped folder (default export/shipped/<profile>).")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="The prepared data the run was trained on (default var/data or COUTURIER_DATA_DIR)."),
    ] = None,
    device_name: Annotated[
        str | None, typer.Option(help="The hardware it was trained on, for the model card (e.g. 'NVIDIA H200').")
    ] = None,
) -> None:
    """Copy a trained run into the shipped folder: trimmed checkpoints, metrics, user vectors, manifest, model card.

    Writes manifest.json, MODEL_CARD.md and SHA256SUMS; refuses above the size limit (25 MB) or when the data differs.
    """
    from couturier.export.data.paths import default_data_dir
    from couturier.export.tools.shipped import SIZE_LIMIT_BYTES, ship, shipped_dir

    target = dest or shipped_dir(profile)
    try:
        folder = ship(
            runs,
            profile,
            target,
            prepared_data_dir=data_dir or default_data_dir(),
            device_description=device_name,
            echo=typer.echo,
        )
    except CouturierError as exc:
        fail(str(exc))
    typer.echo(
        f"shipped the {profile!r} models into {folder} (limit {SIZE_LIMIT_BYTES:,} bytes); check with `couturier models verify`"
    )


@models_app.command("verify")
def models_verify(
    shipped: Annotated[Path | None, typer.Option(help="Shipped folder (default export/shipped/quality).")] = None,
) -> None:
    """Check every shipped file against SHA256SUMS and the manifest against both; exit 2 on any mismatch."""
    from couturier.export.tools.shipped import shipped_dir, verify

    folder = shipped or shipped_dir("quality")
    try:
        manifest = verify(folder)
    except CouturierError as exc:
        fail(str(exc))
    files = manifest["files"]
    typer.echo(
        f"{folder}: the {manifest['profile']!r} models, {len(files)} files, "
        f"{sum(f['bytes'] for f in files):,} bytes: every sha256 matches"
    )


@models_app.command("install")
def models_install(
    shipped: Annotated[Path | None, typer.Option(help="Shipped folder (default export/shipped/quality).")] = None,
    runs: Annotated[Path, typer.Option(help="Runs folder; installs into runs/<profile>/.")] = Path("runs"),
    data_dir: Annotated[
        Path | None, typer.Option(help="Prepared data (default var/data or COUTURIER_DATA_DIR).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace files of a different run in runs/<profile>/.")] = False,
) -> None:
    """Verify the shipped models and the prepared data, then copy them to runs/<profile>/ (what couturier demo does)."""
    from couturier.export.data.paths import default_data_dir
    from couturier.export.tools.shipped import install, shipped_dir

    try:
        run_dir = install(
            shipped or shipped_dir("quality"),
            runs,
            data_dir or default_data_dir(),
            overwrite=overwrite,
            echo=typer.echo,
        )
    except CouturierError as exc:
        fail(str(exc))
    typer.echo(f"installed into {run_dir}")


def register(app: typer.Typer) -> None:
    """Add the offline subcommands to the ``couturier`` command."""
    from couturier.export.cli import register as register_models
    from couturier.export.data.cli import data_app
    from couturier.export.evaluation.cli import judge_app
    from couturier.export.tools.indexing import register as register_index
    from couturier.export.triton.cli import triton_app

    app.add_typer(data_app, name="data", help="Prepare, inspect and import data sets.")
    app.add_typer(triton_app, name="triton", help="Local Triton server and model repository versions.")
    app.add_typer(judge_app, name="judge", help="Judge generated images with a CNN trained on the real catalogue.")
    app.add_typer(models_app, name="models", help="Trained models shipped with the repository: ship, verify, install.")
    register_models(app)
    register_index(app)
    app.command("demo")(demo)
    bench_app = typer.Typer(no_args_is_help=False)
    bench_app.callback(invoke_without_command=True)(bench)
    bench_app.command("data")(bench_data)
    app.add_typer(bench_app, name="bench")
