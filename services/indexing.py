"""Index a prepared catalogue into the running services (``couturier index``; the main job)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from couturier.services.client import CouturierClient, product_batches
from couturier.services.common.images import encode_png
from couturier.v1 import common_pb2

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

    async def stream():  # type: ignore[no-untyped-def]
        for message in product_batches(catalogue_products(catalogue, limit), INDEX_BATCH, encoder_version):
            yield message
            bar.update(len(message.products))

    try:
        if service == "orchestrator":
            return await client.orchestrator.IndexCatalogue(stream(), timeout=timeout_s)
        stub = {"scoring": client.scoring, "retrieval": client.retrieval}[service]
        return await stub.IndexProducts(stream(), timeout=timeout_s)
    finally:
        bar.close()
