"""``couturier triton ...``: set up, run and operate the local Triton; publish and swap model versions."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from couturier.export.triton.errors import TritonError

if TYPE_CHECKING:
    from couturier.export.triton.rollout import RolloutResult

triton_app = typer.Typer(
    name="triton",
    help="Local Triton server (CPU, no Docker) and model repository operations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

HomeOpt = Annotated[
    Path | None,
    typer.Option(help="State dir (env, backends, logs); default $COUTURIER_TRITON_HOME or ./var/triton."),
]
UrlOpt = Annotated[str, typer.Option(help="Triton gRPC address host:port.")]
RepoOpt = Annotated[Path, typer.Option(help="Model repository directory.")]
#: The local Triton's gRPC address and the model repository, where a command is not told otherwise.
DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_REPO = Path("var/model_repository")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@triton_app.command()
def setup(home: HomeOpt = None) -> None:
    """Create (or validate) the Triton virtualenv and the onnxruntime backend directory."""
    from couturier.export.triton.local_server import LocalTriton

    _logging()
    started = time.monotonic()
    try:
        env = LocalTriton(home).setup()
    except TritonError as exc:
        _fail(exc)
    typer.echo(f"triton env ready in {time.monotonic() - started:.1f} s: {env.env_dir} (numpy {env.numpy_version})")


@triton_app.command()
def start(
    repo: RepoOpt,
    home: HomeOpt = None,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0 = a free one).")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port (0 = a free one).")] = 0,
    metrics_port: Annotated[int, typer.Option(help="Metrics port (0 = a free one).")] = 0,
    load: Annotated[list[str] | None, typer.Option(help="Model to load at start (repeatable).")] = None,
    load_all: Annotated[bool, typer.Option(help="Load every model folder in the repository.")] = False,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness before killing it.")] = 120.0,
) -> None:
    """Run tritonserver in the foreground until Ctrl-C / SIGTERM, then stop it cleanly."""
    from couturier.export.triton.local_server import LocalTriton

    _logging()
    models = list(load or [])
    if load_all:
        models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    server = LocalTriton(home)
    stop = False

    def _on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    try:
        url = server.start(
            repo,
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
            load_models=models,
            ready_timeout_s=ready_timeout,
        )
    except TritonError as exc:
        _fail(exc)
    typer.echo(f"triton ready on {url} (models: {', '.join(models) or 'none'}; log {server.log_path})")
    signal.signal(signal.SIGTERM, _on_term)
    try:
        while not stop and server.running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
    typer.echo(f"triton stopped (exit {code})")


@triton_app.command()
def status(url: UrlOpt = DEFAULT_URL, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Server readiness and every model version's state; exit 1 when the server is not ready."""
    from couturier.export.triton.control import ModelControl

    with ModelControl(url) as control:
        ready = control.server_ready(timeout_s=3.0)
        models = control.index() if ready else []
    if as_json:
        typer.echo(json.dumps({"url": url, "ready": ready, "models": [m.__dict__ for m in models]}, indent=2))
    else:
        typer.echo(f"{url}: {'ready' if ready else 'NOT READY'}")
        for m in models:
            typer.echo(f"  {m.name} v{m.version or '-'} {m.state} {m.reason}".rstrip())
    if not ready:
        raise typer.Exit(code=1)


@triton_app.command()
def publish(
    onnx_file: Annotated[Path, typer.Argument(help="Exported ONNX model (dim 0 = dynamic batch).")],
    repo: RepoOpt,
    name: Annotated[str, typer.Option(help="Model name (folder in the repository).")],
    version: Annotated[int | None, typer.Option(help="Version number (default: next).")] = None,
    kind: Annotated[str | None, typer.Option(help="KIND_CPU or KIND_GPU.")] = None,
    max_batch_size: Annotated[int | None, typer.Option()] = None,
    preferred_batch_size: Annotated[list[int] | None, typer.Option(help="Repeatable.")] = None,
    max_queue_delay_us: Annotated[int | None, typer.Option()] = None,
    instance_count: Annotated[
        int | None, typer.Option(help="Model instances (default: the config's, 1 for a new model).")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="onnxruntime threads per instance (intra_op_thread_count); 0 = one per core."),
    ] = None,
    version_policy: Annotated[str | None, typer.Option(help="latest[:N], all or specific:V1,V2.")] = None,
    batched: Annotated[
        bool | None,
        typer.Option(
            "--batched/--unbatched",
            help="Unbatched: max_batch_size 0, full shapes (inputs that do not share dim 0). Default: batched.",
        ),
    ] = None,
) -> None:
    """Copy an ONNX file in as a new numbered version; (re)write config.pbtxt from its signature."""
    from couturier.export.triton.repository import publish_model

    try:
        published = publish_model(
            repo,
            name,
            onnx_file,
            version=version,
            kind=kind,  # type: ignore[arg-type]
            max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred_batch_size or None,
            max_queue_delay_us=max_queue_delay_us,
            instance_count=instance_count,
            intra_op_threads=threads,
            version_policy=version_policy,
            batched=batched,
        )
    except (TritonError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"published {published.name} version {published.version} -> {published.onnx_path}")


@triton_app.command()
def swap(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to serve (already published).")],
    repo: RepoOpt,
    url: UrlOpt = DEFAULT_URL,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per load step.")] = 120.0,
) -> None:
    """Switch a running Triton to VERSION of NAME without a restart (old version drains first)."""
    from couturier.export.triton.versions import swap_version

    try:
        result = swap_version(url, repo, name, version, timeout_s=timeout)
    except TritonError as exc:
        _fail(exc)
    typer.echo(f"{name}: serving version {result.current} (was {list(result.previous)}) in {result.seconds:.2f} s")


UrlsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--url",
        help="Triton gRPC host:port (repeatable; default 127.0.0.1:8001). A name is expanded to every address "
        "it resolves to: give a headless Service (triton-pods.<ns>.svc.cluster.local:8001) to reach every pod.",
    ),
]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds allowed per load step.")]


def _print_result(result: RolloutResult) -> None:
    for check in result.smoke:
        typer.echo(
            f"  smoke {check.url}: version {check.version} matches onnxruntime "
            f"(outputs {', '.join(check.outputs)}; max |diff| {check.max_abs_diff:.2g})"
        )
    typer.echo(
        f"{result.model}: {result.mode}; serving {list(result.serving)} (was {list(result.previous)}) "
        f"on {', '.join(result.urls)} in {result.seconds:.2f} s"
    )


@triton_app.command()
def rollout(
    name: Annotated[str, typer.Argument(help="Model name.")],
    repo: RepoOpt,
    onnx: Annotated[Path | None, typer.Option(help="ONNX file to publish as the next version.")] = None,
    version: Annotated[int | None, typer.Option(help="An already published version (instead of --onnx).")] = None,
    url: UrlsOpt = None,
    canary: Annotated[
        bool, typer.Option(help="Keep the old and the new version loaded (pin replicas per version).")
    ] = False,
    inputs: Annotated[
        Path | None, typer.Option(help="Smoke inputs (.npz, one array per input; default random).")
    ] = None,
    atol: Annotated[float, typer.Option(help="Smoke check: absolute tolerance vs onnxruntime.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Smoke check: relative tolerance vs onnxruntime.")] = 1e-3,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Publish a version, load it beside the served one, check it against onnxruntime, then promote it (or --canary)."""
    import numpy as np

    from couturier.export.triton.rollout import pinning_hint
    from couturier.export.triton.rollout import rollout as run_rollout

    _logging()
    feed = None
    if inputs is not None:
        with np.load(inputs) as data:
            feed = {key: data[key] for key in data.files}
    try:
        result = run_rollout(
            url or [DEFAULT_URL],
            repo,
            name,
            onnx_path=onnx,
            version=version,
            canary=canary,
            inputs=feed,
            atol=atol,
            rtol=rtol,
            timeout_s=timeout,
        )
    except (TritonError, ValueError) as exc:
        _fail(exc)
    _print_result(result)
    if canary:
        typer.echo(pinning_hint(result))


def _serve_version(
    operation: Callable[..., RolloutResult],
    name: str,
    version: int | None,
    repo: Path,
    urls: list[str] | None,
    timeout: float,
) -> None:
    """Run :func:`~couturier.export.triton.rollout.promote` or ``rollback`` (same arguments) on every server."""
    _logging()
    try:
        result = operation(urls or [DEFAULT_URL], repo, name, version, timeout_s=timeout)
    except TritonError as exc:
        _fail(exc)
    _print_result(result)


@triton_app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        int | None, typer.Argument(help="Version to keep (default: the newest the config serves).")
    ] = None,
    repo: RepoOpt = DEFAULT_REPO,
    url: UrlsOpt = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """End a canary: serve only VERSION (the others drain, then unload); persisted in config.pbtxt."""
    from couturier.export.triton.rollout import promote as run_promote

    _serve_version(run_promote, name, version, repo, url, timeout)


@triton_app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    to: Annotated[
        int | None, typer.Option(help="Version to serve again (default: the one below the newest loaded).")
    ] = None,
    repo: RepoOpt = DEFAULT_REPO,
    url: UrlsOpt = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Serve an older version again (loaded beside the current one first, so nothing fails); persisted."""
    from couturier.export.triton.rollout import rollback as run_rollback

    _serve_version(run_rollback, name, to, repo, url, timeout)
    typer.echo("replicas pinned to a version that is no longer loaded now fail: remove their pin (or the canary)")
