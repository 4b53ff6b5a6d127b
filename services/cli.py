"""The ``couturier`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from google.protobuf.json_format import MessageToDict

from couturier.services.common.errors import CouturierError

app = typer.Typer(
    name="couturier",
    help="Visually-aware fashion recommendation and generative design: data, models and gRPC services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ServiceArg = Annotated[str, typer.Argument(help="scoring, latent, retrieval, orchestrator, or all (one process).")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def serve(
    service: ServiceArg,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default 127.0.0.1; env COUTURIER_<SERVICE>_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option(help="gRPC port (env COUTURIER_<SERVICE>_PORT).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Prometheus /metrics port (default: none).")] = None,
    log_format: Annotated[Optional[str], typer.Option(help="json or console.")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    """Run one service (or all four in one process) until SIGINT/SIGTERM."""
    from couturier.services.common.config import load_settings
    from couturier.services.common.logs import configure_logging
    from couturier.services.common.server import run_until_signalled
    from couturier.services.registry import SERVICE_KEYS, make_host

    keys = SERVICE_KEYS if service == "all" else (service,)
    if service != "all" and service not in SERVICE_KEYS:
        _fail(f"unknown service {service!r}; choose one of {', '.join(SERVICE_KEYS)} or all")
    if service == "all" and port is not None:
        _fail("--port applies to one service; set COUTURIER_<SERVICE>_PORT for each service of 'all'")
    overrides = {"host": host, "metrics_port": metrics_port, "log_format": log_format, "log_level": log_level}
    try:
        settings = {key: load_settings(key, **overrides, port=port) for key in keys}
        if service == "all":  # the orchestrator and the latent service talk to their siblings in this process
            peers = {f"{key}_target": f"127.0.0.1:{settings[key].port}" for key in ("scoring", "latent", "retrieval")}
            settings["orchestrator"] = load_settings("orchestrator", **overrides, **peers)
            settings["latent"] = load_settings(
                "latent", **overrides, scoring_target=peers["scoring_target"], retrieval_target=peers["retrieval_target"]
            )
            for key in ("scoring", "latent", "retrieval"):  # one /metrics endpoint per process
                settings[key] = settings[key].model_copy(update={"metrics_port": None})
    except CouturierError as exc:
        _fail(str(exc))
    first = settings[keys[0]]
    configure_logging(first.log_level, first.log_format)
    hosts = [make_host(key, settings[key]) for key in keys]
    asyncio.run(run_until_signalled(hosts))


@app.command()
def health(
    target: Annotated[str, typer.Argument(help="host:port of a couturier service.")],
    service: Annotated[str, typer.Option(help="Service name to ask about ('' = the whole server).")] = "",
    wait: Annotated[float, typer.Option(help="Wait up to this many seconds for SERVING.")] = 0.0,
) -> None:
    """Ask a service's standard gRPC health service; exit 0 only when SERVING (usable as a probe)."""
    import grpc

    from couturier.services.client import check_health, wait_until_serving

    try:
        if wait > 0:
            asyncio.run(wait_until_serving(target, service, timeout_s=wait))
            status = "SERVING"
        else:
            status = asyncio.run(check_health(target, service))
    except (TimeoutError, grpc.aio.AioRpcError) as exc:
        _fail(str(exc) if isinstance(exc, TimeoutError) else f"{target}: {exc.code().name} {exc.details()}")
    typer.echo(status)
    if status != "SERVING":
        raise typer.Exit(code=1)


@app.command()
def status(target: Annotated[str, typer.Argument(help="host:port of a couturier service.")]) -> None:
    """Print a service's diagnostics (dependencies, settings, fallbacks) and its reflected services."""
    from couturier.services.client import get_status, list_services

    async def gather() -> dict[str, object]:
        report = MessageToDict(await get_status(target), preserving_proto_field_name=True)
        report["reflection"] = await list_services(target)
        return report

    typer.echo(json.dumps(asyncio.run(gather()), indent=2))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("runs/demo"),
    data_dir: Annotated[Optional[Path], typer.Option(help="Data directory (default var/data or COUTURIER_DATA_DIR).")] = None,
    profile: Annotated[str, typer.Option(help="Data and training profile: demo (2-core machine) or full.")] = "demo",
) -> None:
    """The main job on the embedded default: data, models (trained once), the whole stack, every flow, a report.

    Trains and publishes models only when missing (about 12 minutes on a 2-core CPU the first time), runs every flow against a local Triton and the four services, stops them, writes <out>/demo_report.html.
    """
    from couturier.services.demo import run_demo

    try:
        report = run_demo(out, data_dir=data_dir, profile=profile)
    except CouturierError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted (the serving stack, if it had started, was stopped)", err=True)
        raise typer.Exit(code=130) from None
    failed = json.loads((report.parent / "demo_report.json").read_text()).get("errors", {})
    for section, message in failed.items():
        typer.echo(f"error: {section}: {message}", err=True)
    typer.echo(f"report: {report}")
    if failed:
        raise typer.Exit(code=1)


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Where bench.json and bench.md go.")] = Path("runs/bench"),
    orchestrator: Annotated[Optional[str], typer.Option(help="Attach: orchestrator host:port (give all four services).")] = None,
    scoring: Annotated[Optional[str], typer.Option(help="Attach: scoring host:port.")] = None,
    latent: Annotated[Optional[str], typer.Option(help="Attach: latent host:port.")] = None,
    retrieval: Annotated[Optional[str], typer.Option(help="Attach: retrieval host:port.")] = None,
    triton: Annotated[Optional[str], typer.Option(help="Attach: Triton gRPC host:port (backend comparison, statistics).")] = None,
    repo_dir: Annotated[Path, typer.Option(help="Model repository (Triton and in-process onnxruntime).")] = Path("var/model_repository"),
    user_vectors_dir: Annotated[Path, typer.Option(help="Published user vectors.")] = Path("var/user_vectors"),
    data_dir: Annotated[Optional[Path], typer.Option(help="Prepared data (default var/data or COUTURIER_DATA_DIR).")] = None,
    index_limit: Annotated[int, typer.Option(help="Catalogue products indexed and used in requests.")] = 2000,
    index: Annotated[Optional[bool], typer.Option("--index/--no-index", help="Index the catalogue subset first (default: only for a stack the bench starts).")] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,16,64",
    duration_s: Annotated[float, typer.Option(help="Seconds of closed-loop load per RPC and level.")] = 5.0,
    heavy_calls: Annotated[int, typer.Option(help="Latent/orchestrator-design RPCs: at most max(this, concurrency) calls per level.")] = 8,
    only: Annotated[str, typer.Option(help="Comma-separated substrings of RPC names to run (default all).")] = "",
    compare_calls: Annotated[int, typer.Option(help="Calls per model and batch for Triton vs onnxruntime (0: skip).")] = 50,
    timeout_s: Annotated[float, typer.Option(help="Deadline of each RPC.")] = 120.0,
) -> None:
    """Latency (p50/p90/p99) and throughput of every RPC at each concurrency, and Triton vs onnxruntime per model."""
    import os

    from couturier.services.bench import BenchOptions, bench as run_bench

    attach = {"orchestrator": orchestrator, "scoring": scoring, "latent": latent, "retrieval": retrieval}
    given = {k: v for k, v in attach.items() if v}
    if given and len(given) != len(attach):
        _fail(f"attaching needs all four services; missing --{', --'.join(k for k in attach if k not in given)}")
    try:
        levels = tuple(int(c) for c in concurrency.split(",") if c.strip())
    except ValueError:
        _fail(f"--concurrency must be comma-separated integers, got {concurrency!r}")
    options = BenchOptions(
        out=out, targets=given, triton_url=triton or "", repo_dir=repo_dir, user_vectors_dir=user_vectors_dir,
        data_dir=data_dir or Path(os.environ.get("COUTURIER_DATA_DIR", "var/data")), index_limit=index_limit,
        index=index, levels=levels, duration_s=duration_s, heavy_calls=heavy_calls,
        only=tuple(s.strip() for s in only.split(",") if s.strip()), compare_calls=compare_calls, timeout_s=timeout_s,
    )
    json_path, md_path = asyncio.run(run_bench(options, echo=typer.echo))
    typer.echo(f"results: {md_path} and {json_path}")


def _mount_subcommands() -> None:
    from couturier.export.data.cli import data_app
    from couturier.export.cli import register
    from couturier.export.triton.cli import triton_app
    from couturier.services.indexing import register as register_index

    app.add_typer(data_app, name="data", help="Prepare, inspect and import data sets.")
    app.add_typer(triton_app, name="triton", help="Local Triton server and model repository versions.")
    register(app)
    register_index(app)


_mount_subcommands()


def main() -> None:
    try:
        app()
    except CouturierError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
