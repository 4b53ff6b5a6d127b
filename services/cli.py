"""The ``couturier`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from google.protobuf.json_format import MessageToDict

from couturier.services.common.errors import CouturierError

if TYPE_CHECKING:
    from couturier.services.common.downstream import ChannelSecurity

app = typer.Typer(
    name="couturier",
    help="Visually-aware fashion recommendation and generative design: data, models and gRPC services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ServiceArg = Annotated[str, typer.Argument(help="scoring, latent, retrieval, orchestrator, or all (one process).")]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with code 2 (a usage error); every subcommand uses it."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def serve(
    service: ServiceArg,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default 127.0.0.1; env COUTURIER_<SERVICE>_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (env COUTURIER_<SERVICE>_PORT).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port (default: none).")] = None,
    log_format: Annotated[str | None, typer.Option(help="json or console.")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    """Run one service (or all four in one process) until SIGINT/SIGTERM.

    Vectors (scoring, retrieval): COUTURIER_<SERVICE>_MILVUS_URI is a milvus-lite file or http://host:19530.

    A milvus-lite file (default var/milvus/<service>.db) belongs to one process; a Milvus server is shared.

    serve never starts Milvus: locally run `.venv/bin/milvus-server --data DIR` (dev extra); see docs/vector-store.md.
    """
    from couturier.services.common.config import load_settings
    from couturier.services.common.logs import configure_logging
    from couturier.services.common.server import run_until_signalled
    from couturier.services.registry import SERVICE_KEYS, make_host

    keys = SERVICE_KEYS if service == "all" else (service,)
    if service != "all" and service not in SERVICE_KEYS:
        fail(f"unknown service {service!r}; choose one of {', '.join(SERVICE_KEYS)} or all")
    if service == "all" and port is not None:
        fail("--port applies to one service; set COUTURIER_<SERVICE>_PORT for each service of 'all'")
    overrides = {"host": host, "metrics_port": metrics_port, "log_format": log_format, "log_level": log_level}
    try:
        settings = {key: load_settings(key, **overrides, port=port) for key in keys}
        if service == "all":  # the orchestrator (the only caller of other services) talks to its siblings here
            peers = {f"{key}_target": f"127.0.0.1:{settings[key].port}" for key in ("scoring", "latent", "retrieval")}
            settings["orchestrator"] = load_settings("orchestrator", **overrides, **peers)
            for key in ("scoring", "latent", "retrieval"):  # one /metrics endpoint per process
                settings[key] = settings[key].model_copy(update={"metrics_port": None})
    except CouturierError as exc:
        fail(str(exc))
    first = settings[keys[0]]
    configure_logging(first.log_level, first.log_format)
    hosts = [make_host(key, settings[key]) for key in keys]
    asyncio.run(run_until_signalled(hosts))


CaFile = Annotated[str, typer.Option("--ca-file", help="PEM CA of a service with TLS (docs/security.md).")]
CertFile = Annotated[str, typer.Option("--cert-file", help="PEM client certificate, for a service with mTLS.")]
KeyFile = Annotated[str, typer.Option("--key-file", help="PEM private key of --cert-file.")]
ServerName = Annotated[str, typer.Option("--server-name", help="Name to check the certificate against.")]
TokenFile = Annotated[str, typer.Option("--token-file", help="File with the bearer token (or caller:token).")]


def _security(
    ca_file: str, cert_file: str, key_file: str, server_name: str, token_file: str = ""
) -> ChannelSecurity | None:
    """The ChannelSecurity the TLS / token flags describe (None: plaintext, no token)."""
    from couturier.services.common.downstream import ChannelSecurity
    from couturier.services.common.security import TlsFiles, channel_credentials, read_token_file

    if not (ca_file or cert_file or token_file):
        return None
    try:
        credentials = channel_credentials(TlsFiles(cert_file, key_file, ca_file), "--ca-file/--cert-file")
        token = read_token_file(token_file, "--token-file") if token_file else ""
    except CouturierError as exc:
        fail(str(exc))
    return ChannelSecurity(credentials, server_name, token)


@app.command()
def health(
    target: Annotated[str, typer.Argument(help="host:port of a couturier service.")],
    service: Annotated[str, typer.Option(help="Service name to ask about ('' = the whole server).")] = "",
    wait: Annotated[float, typer.Option(help="Wait up to this many seconds for SERVING.")] = 0.0,
    ca_file: CaFile = "",
    cert_file: CertFile = "",
    key_file: KeyFile = "",
    server_name: ServerName = "",
) -> None:
    """Ask a service's standard gRPC health service; exit 0 only when SERVING (usable as a probe)."""
    import grpc

    from couturier.services.client import check_health, wait_until_serving

    security = _security(ca_file, cert_file, key_file, server_name)
    try:
        if wait > 0:
            asyncio.run(wait_until_serving(target, service, timeout_s=wait, security=security))
            status = "SERVING"
        else:
            status = asyncio.run(check_health(target, service, security=security))
    except (TimeoutError, grpc.aio.AioRpcError) as exc:
        fail(str(exc) if isinstance(exc, TimeoutError) else f"{target}: {exc.code().name} {exc.details()}")
    typer.echo(status)
    if status != "SERVING":
        raise typer.Exit(code=1)


@app.command()
def status(
    target: Annotated[str, typer.Argument(help="host:port of a couturier service.")],
    ca_file: CaFile = "",
    cert_file: CertFile = "",
    key_file: KeyFile = "",
    server_name: ServerName = "",
    token_file: TokenFile = "",
) -> None:
    """Print a service's diagnostics (dependencies, settings, fallbacks) and its reflected services."""
    from couturier.services.client import get_status, list_services

    security = _security(ca_file, cert_file, key_file, server_name, token_file)

    async def gather() -> dict[str, object]:
        report = MessageToDict(await get_status(target, security=security), preserving_proto_field_name=True)
        report["reflection"] = await list_services(target, security=security)
        return report

    import grpc

    try:
        report = asyncio.run(gather())
    except grpc.aio.AioRpcError as exc:
        fail(f"{target}: {exc.code().name} {exc.details()}")
    typer.echo(json.dumps(report, indent=2))


#: Entry-point group through which other parts of the distribution add subcommands: each entry point is
#: a ``register(app: typer.Typer) -> None``. The offline tooling (data, train, export, eval, triton,
#: demo, bench, index) registers itself here, so this serving module never imports it.
PLUGIN_GROUP = "couturier.cli"


def mount_plugins() -> list[str]:
    """Let every installed ``couturier.cli`` entry point register its subcommands; returns their names."""
    from importlib.metadata import entry_points

    mounted = []
    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:  # e.g. a serving image without the export extra's packages
            typer.echo(f"note: subcommands of {entry.value} are unavailable ({exc})", err=True)
            continue
        register(app)
        mounted.append(entry.name)
    return mounted


def main() -> None:
    mount_plugins()
    try:
        app()
    except CouturierError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
