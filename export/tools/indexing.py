"""Index a prepared catalogue into the running services (``couturier index``; the main job)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm

from couturier.services.client import CouturierClient, product_batches
from couturier.services.common.images import encode_png
from couturier.v1 import catalogue_pb2, common_pb2

#: Products per IndexProductsRequest message.
INDEX_BATCH = 256


def catalogue_products(catalogue: Any, limit: int | None = None) -> Iterator[tuple[common_pb2.Product, bytes]]:
    """(Product, PNG bytes) for every item of a :class:`couturier.export.data.catalogue.Catalogue`."""
    count = len(catalogue) if limit is None else min(limit, len(catalogue))
    for i in range(count):
        colour = int(catalogue.colour[i])
        product = common_pb2.Product(
            product_id=str(catalogue.product_ids[i]),
            category=catalogue.category_names[int(catalogue.category[i])],
            colour=catalogue.colour_names[colour] if colour >= 0 else "",
        )
        yield product, encode_png(catalogue.images[i])


async def index_catalogue(
    client: CouturierClient,
    catalogue: Any,
    *,
    service: str = "orchestrator",
    limit: int | None = None,
    encoder_version: str = "",
    progress: bool = True,
    timeout_s: float = 1800.0,
) -> Any:
    """Streams the catalogue to ``IndexCatalogue`` (both spaces) or one service's ``IndexProducts``."""
    total = len(catalogue) if limit is None else min(limit, len(catalogue))
    bar = tqdm(total=total, desc=f"indexing via {service}", unit="item", disable=not progress)

    async def stream() -> AsyncIterator[catalogue_pb2.IndexProductsRequest]:
        for message in product_batches(catalogue_products(catalogue, limit), INDEX_BATCH, encoder_version):
            yield message
            bar.update(len(message.products))

    try:
        if service == "orchestrator":
            return await client.orchestrator.IndexCatalogue(stream(), timeout=timeout_s)
        stub: Any = {"scoring": client.scoring, "retrieval": client.retrieval}[service]
        return await stub.IndexProducts(stream(), timeout=timeout_s)
    finally:
        bar.close()


def register(app: typer.Typer) -> None:
    """Adds ``couturier index`` to the CLI."""

    @app.command("index")
    def index(
        target: Annotated[
            str, typer.Option(help="host:port of the orchestrator (or of --service).")
        ] = "127.0.0.1:50050",
        service: Annotated[
            str, typer.Option(help="orchestrator (both vector spaces), scoring or retrieval.")
        ] = "orchestrator",
        data_dir: Annotated[Path | None, typer.Option(help="Prepared data (default var/data).")] = None,
        limit: Annotated[int | None, typer.Option(help="Index only the first N products.")] = None,
        encoder_version: Annotated[
            str,
            typer.Option("--model-version", help="Encoder version to embed with (re-index before moving a pin)."),
        ] = "",
    ) -> None:
        """Index the prepared catalogue into the running services (idempotent; re-index after an encoder change)."""
        from couturier.export.data.dataset import load_prepared

        if service not in ("orchestrator", "scoring", "retrieval"):
            raise typer.BadParameter("--service must be orchestrator, scoring or retrieval")
        catalogue = load_prepared(data_dir).catalogue

        async def run() -> Any:
            async with CouturierClient(**{f"{service}_target": target}) as client:
                return await index_catalogue(
                    client, catalogue, service=service, limit=limit, encoder_version=encoder_version
                )

        typer.echo(asyncio.run(run()))
