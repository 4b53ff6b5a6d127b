"""Index a prepared catalogue into the running services (``couturier index``; the main job), and
repair the two vector stores when they diverged (``couturier index --reconcile``).

Scoring and retrieval each keep their own vectors of the same catalogue. An ``IndexCatalogue`` that
failed half way (a service killed, a store down) can leave them holding different products; the
orchestrator's error then carries a per-store report (:func:`failure_report`). Reconciling lists the
ids each store holds (``ListProductIds``, paged), compares them with the catalogue source (the
prepared data ``couturier index`` reads, with the same ``--limit``) and repairs each store: products
of the source it lacks are indexed into it from the source, products the source no longer has are
deleted from it. Running it again finds nothing to do.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from couturier.services.client import CouturierClient, product_batches
from couturier.services.common import limits
from couturier.services.common.catalogue_index import read_report
from couturier.services.common.images import encode_png
from couturier.v1 import catalogue_pb2, common_pb2, orchestrator_pb2

#: Products per IndexProductsRequest message.
INDEX_BATCH = 256
#: The two stores of the catalogue (services that keep product vectors).
STORES = ("scoring", "retrieval")


def catalogue_products(
    catalogue: Any, limit: int | None = None, rows: Iterable[int] | None = None
) -> Iterator[tuple[common_pb2.Product, bytes]]:
    """(Product, PNG bytes) for every item of a :class:`couturier.export.data.catalogue.Catalogue` (the
    first ``limit``), or for the given ``rows`` only."""
    count = len(catalogue) if limit is None else min(limit, len(catalogue))
    for i in range(count) if rows is None else rows:
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


def failure_report(error: grpc.aio.AioRpcError) -> orchestrator_pb2.IndexCatalogueResponse | None:
    """The per-store report of a failed ``IndexCatalogue`` (None when the error carries none)."""
    return read_report(error.trailing_metadata())


# -- reconciling the two stores --------------------------------------------------------------------


@dataclass(frozen=True)
class StoreDiff:
    """How one store differs from the catalogue source."""

    store: str
    held: int  # distinct ids the store holds
    duplicates: int  # extra listings of ids listed more than once (0 unless the store keeps a product twice)
    missing: list[str]  # in the source, not in the store (source order)
    orphans: list[str]  # in the store, not in the source (ascending)
    duplicated: list[str]  # source ids the store holds more than once (an upsert leaves one; ascending)


def diff_stores(source_ids: Sequence[str], stored: Mapping[str, Sequence[str]]) -> dict[str, StoreDiff]:
    """Per store: what it lacks of ``source_ids`` and what it holds beyond them (pure; duplicates counted)."""
    source = dict.fromkeys(source_ids)
    diffs = {}
    for store, listed in stored.items():
        held = set(listed)
        twice = [i for i, n in Counter(listed).items() if n > 1]
        diffs[store] = StoreDiff(
            store=store,
            held=len(held),
            duplicates=len(listed) - len(held),
            missing=[i for i in source if i not in held],
            orphans=sorted(i for i in held if i not in source),
            duplicated=sorted(i for i in twice if i in source),
        )
    return diffs


async def list_product_ids(
    stub: Any, encoder_version: str = "", *, page_size: int = limits.MAX_LIST_PAGE, timeout_s: float = 60.0
) -> tuple[list[str], str]:
    """Every id one store holds for ``encoder_version`` (all pages, as listed) and the version it resolved."""
    ids: list[str] = []
    token = ""
    version = encoder_version
    while True:
        page = await stub.ListProductIds(
            catalogue_pb2.ListProductIdsRequest(encoder_version=version, page_size=page_size, page_token=token),
            timeout=timeout_s,
        )
        version = page.encoder.version or version  # every page of one listing reads the same version
        ids.extend(page.product_ids)
        token = page.next_page_token
        if not token:
            return ids, version


async def reconcile(
    client: CouturierClient,
    catalogue: Any,
    *,
    limit: int | None = None,
    encoder_version: str = "",
    dry_run: bool = False,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Makes the scoring and retrieval stores hold exactly the source's products; returns a summary.

    Per store: ``held`` ids before, ``missing`` (source products it lacked) and ``orphans`` (products the
    source no longer has), what was ``indexed`` and ``deleted``, and ``held_after``. ``equal`` says both
    stores hold the source's ids after the repair (with ``dry_run``, whether they did already).
    """
    count = len(catalogue) if limit is None else min(limit, len(catalogue))
    source_ids = [str(catalogue.product_ids[i]) for i in range(count)]
    rows = {pid: i for i, pid in enumerate(source_ids)}
    stubs: dict[str, Any] = {"scoring": client.scoring, "retrieval": client.retrieval}
    listed = await asyncio.gather(*(list_product_ids(stubs[s], encoder_version) for s in STORES))
    versions = {store: version for store, (_, version) in zip(STORES, listed, strict=True)}
    diffs = diff_stores(source_ids, {store: ids for store, (ids, _) in zip(STORES, listed, strict=True)})
    summary: dict[str, Any] = {"source": len(source_ids), "dry_run": dry_run, "stores": {}}
    for store in STORES:
        diff = diffs[store]
        indexed = deleted = 0
        reindex = [*diff.missing, *diff.duplicated]  # upserting a product held twice leaves one copy
        if not dry_run and reindex:
            messages = product_batches(
                catalogue_products(catalogue, rows=[rows[i] for i in reindex]), INDEX_BATCH, versions[store]
            )

            async def stream(batches: Iterator[catalogue_pb2.IndexProductsRequest]) -> AsyncIterator[Any]:
                for message in batches:
                    yield message

            reply = await stubs[store].IndexProducts(stream(messages), timeout=timeout_s)
            indexed = int(reply.upserted)
        if not dry_run:
            for start in range(0, len(diff.orphans), limits.MAX_DELETE_IDS):
                chunk = diff.orphans[start : start + limits.MAX_DELETE_IDS]
                reply = await stubs[store].DeleteProducts(
                    catalogue_pb2.DeleteProductsRequest(product_ids=chunk), timeout=timeout_s
                )
                deleted += int(reply.deleted)
        summary["stores"][store] = {
            "encoder_version": versions[store],
            "held": diff.held,
            "duplicates": diff.duplicates,
            "missing": len(diff.missing),
            "orphans": len(diff.orphans),
            "missing_ids": diff.missing[:20],
            "orphan_ids": diff.orphans[:20],
            "indexed": indexed,
            "deleted": deleted,
        }
    if dry_run:
        after = diffs
    else:
        relisted = await asyncio.gather(*(list_product_ids(stubs[s], versions[s]) for s in STORES))
        after = diff_stores(source_ids, {store: ids for store, (ids, _) in zip(STORES, relisted, strict=True)})
    for store in STORES:
        summary["stores"][store]["held_after"] = after[store].held
        summary["stores"][store]["duplicates_after"] = after[store].duplicates
    summary["equal"] = all(not d.missing and not d.orphans and not d.duplicates for d in after.values())
    return summary


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
        reconcile_stores: Annotated[
            bool,
            typer.Option(
                "--reconcile",
                help="Instead of indexing everything: make the scoring and retrieval stores hold exactly the "
                "source's products (index what a store lacks, delete what the source no longer has); prints a "
                "JSON summary. Idempotent.",
            ),
        ] = False,
        dry_run: Annotated[
            bool, typer.Option(help="With --reconcile: report the differences, change nothing.")
        ] = False,
        scoring_target: Annotated[
            str, typer.Option(help="With --reconcile: host:port of the scoring service.")
        ] = "127.0.0.1:50051",
        retrieval_target: Annotated[
            str, typer.Option(help="With --reconcile: host:port of the retrieval service.")
        ] = "127.0.0.1:50053",
    ) -> None:
        """Index the prepared catalogue into the running services (idempotent; re-index after an encoder change).

        A failed orchestrator indexing prints what landed in each store (JSON) and exits 1; repair it with
        --reconcile (same --data-dir and --limit)."""
        from couturier.export.data.dataset import load_prepared

        if service not in ("orchestrator", "scoring", "retrieval"):
            raise typer.BadParameter("--service must be orchestrator, scoring or retrieval")
        if dry_run and not reconcile_stores:
            raise typer.BadParameter("--dry-run goes with --reconcile")
        catalogue = load_prepared(data_dir).catalogue

        if reconcile_stores:

            async def repair() -> dict[str, Any]:
                async with CouturierClient(scoring_target=scoring_target, retrieval_target=retrieval_target) as client:
                    return await reconcile(
                        client, catalogue, limit=limit, encoder_version=encoder_version, dry_run=dry_run
                    )

            try:
                summary = asyncio.run(repair())
            except grpc.aio.AioRpcError as exc:
                typer.echo(f"error: reconcile failed ({exc.code().name}): {exc.details()}", err=True)
                raise typer.Exit(code=1) from None
            typer.echo(json.dumps(summary, indent=2))
            if not summary["equal"] and not dry_run:
                raise typer.Exit(code=1)
            return

        async def run() -> Any:
            async with CouturierClient(**{f"{service}_target": target}) as client:
                return await index_catalogue(
                    client, catalogue, service=service, limit=limit, encoder_version=encoder_version
                )

        try:
            typer.echo(asyncio.run(run()))
        except grpc.aio.AioRpcError as exc:
            typer.echo(f"error: indexing failed ({exc.code().name}): {exc.details()}", err=True)
            report = failure_report(exc)
            if report is not None:
                typer.echo(
                    json.dumps(
                        MessageToDict(
                            report, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                        ),
                        indent=2,
                    )
                )
            raise typer.Exit(code=1) from None
