"""Orchestrator: the public entry point chaining scoring, latent optimisation and visual retrieval.

It is the only service that calls other couturier services. Requests for the latent optimisation
service are resolved here first: user ids to user vectors (and top-k thresholds) through
ScoringService.DescribeUsers, catalogue product ids to their stored image and category through
VisualRetrievalService.GetProducts; the latent service itself takes only those resolved inputs.

Every flow passes the caller's remaining deadline to each downstream call; a cancelled call cancels
its downstream calls (grpc.aio cancels the handler task, which cancels the awaited calls). When any
step fails the whole call fails with that step's status code and a message naming the step: never a
half answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import grpc

from couturier.services.common import limits
from couturier.services.common.catalogue_index import (
    REPORT_TRAILER,
    ReceivedIds,
    describe_report,
    store_report,
    unknown_report,
)
from couturier.services.common.config import OrchestratorSettings
from couturier.services.common.downstream import ChannelSecurity, Stubs, all_or_nothing, remaining_s, step
from couturier.services.common.errors import (
    DownstreamCallFailed,
    InvalidInput,
    UnknownEntity,
    map_exception,
    status_message,
)
from couturier.services.common.health import DependencyCheck, GrpcHealthProbe
from couturier.services.common.logs import get_logger
from couturier.services.common.security import channel_credentials, read_token_file
from couturier.services.common.server import ServiceDefinition
from couturier.services.common.validation import audience_users, int_in_range, require_id
from couturier.v1 import (
    catalogue_pb2,
    common_pb2,
    latent_pb2,
    latent_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name

#: Latent requests whose audience (and item) the orchestrator resolves before forwarding them.
LatentRequest = latent_pb2.DesignRequest | latent_pb2.AlterRequest | latent_pb2.SellerShiftsRequest
ItemRequest = TypeVar("ItemRequest", latent_pb2.AlterRequest, latent_pb2.SellerShiftsRequest)
#: A service that keeps product vectors (IndexProducts, ListProductIds).
IndexingStub = scoring_pb2_grpc.ScoringServiceStub | retrieval_pb2_grpc.VisualRetrievalServiceStub
#: Seconds a failed IndexCatalogue spends asking the stores what landed (within the caller's deadline).
REPORT_CHECK_S = 30.0

log = get_logger(__name__)


def downstream_security(settings: OrchestratorSettings) -> ChannelSecurity:
    """TLS and the bearer token of the channels to scoring, latent and retrieval (files read now)."""
    return ChannelSecurity(
        credentials=channel_credentials(settings.downstream_tls, "downstream_tls"),
        server_name=settings.downstream_tls_server_name,
        token=read_token_file(settings.downstream_token_file, "downstream_token_file")
        if settings.downstream_token_file
        else "",
    )


class Downstream:
    """Stubs of the three backend services over long-lived channels."""

    def __init__(self, settings: OrchestratorSettings, security: ChannelSecurity | None = None) -> None:
        self.stubs = Stubs(
            {
                "scoring": settings.scoring_target,
                "latent": settings.latent_target,
                "retrieval": settings.retrieval_target,
            },
            {
                "scoring": scoring_pb2_grpc.ScoringServiceStub,
                "latent": latent_pb2_grpc.LatentOptimizationServiceStub,
                "retrieval": retrieval_pb2_grpc.VisualRetrievalServiceStub,
            },
            settings.max_message_bytes,
            settings.channel_options,
            security,
        )
        self.cap_s = settings.rpc_timeout_s
        self.stream_cap_s = settings.stream_timeout_s  # IndexCatalogue's downstream IndexProducts streams

    @property
    def scoring(self) -> scoring_pb2_grpc.ScoringServiceStub:
        stub: scoring_pb2_grpc.ScoringServiceStub = self.stubs["scoring"]
        return stub

    @property
    def latent(self) -> latent_pb2_grpc.LatentOptimizationServiceStub:
        stub: latent_pb2_grpc.LatentOptimizationServiceStub = self.stubs["latent"]
        return stub

    @property
    def retrieval(self) -> retrieval_pb2_grpc.VisualRetrievalServiceStub:
        stub: retrieval_pb2_grpc.VisualRetrievalServiceStub = self.stubs["retrieval"]
        return stub

    async def close(self) -> None:
        await self.stubs.close()


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, downstream: Downstream) -> None:
        self.down = downstream

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        return remaining_s(context, self.down.cap_s)

    # -- resolution of ids for the latent service ----------------------------------------------------

    async def _audience(
        self,
        audience: common_pb2.Audience,
        context: grpc.aio.ServicerContext,
        field: str = "audience",
        top_k: int = 0,
        category: str = "",
    ) -> latent_pb2.ResolvedAudience:
        """User ids -> user vectors (and, when ``top_k`` > 0, each user's k-th best score in ``category``)."""
        audience_users(audience, field)
        request = scoring_pb2.DescribeUsersRequest(audience=audience, top_k=top_k, category=category)
        async with step("scoring.DescribeUsers"):
            response = await self.down.scoring.DescribeUsers(request, timeout=self._timeout(context))
        resolved = latent_pb2.ResolvedAudience(
            model=response.model, top_k=top_k, category=category, segment_name=audience.group.segment_name
        )
        for user in response.users:
            resolved.users.add(
                user_id=user.user_id,
                vector=user.vector,
                best_score=user.best_score,
                kth_best_score=user.kth_best_score,
            )
        return resolved

    async def _item(
        self, item: common_pb2.ItemSource, category: str, context: grpc.aio.ServicerContext, field: str = "item"
    ) -> tuple[common_pb2.ItemSource, str]:
        """A catalogue product id -> its stored image and category; an uploaded image passes unchanged."""
        if item.WhichOneof("source") != "product_id":
            return item, category
        product_id = require_id(item.product_id, f"{field}.product_id")
        request = retrieval_pb2.GetProductsRequest(product_ids=[product_id])
        async with step("retrieval.GetProducts"):
            response = await self.down.retrieval.GetProducts(request, timeout=self._timeout(context))
        if not response.products:
            raise UnknownEntity(
                f"product {product_id!r} is not in the catalogue index; "
                "index it (`couturier index`) or upload its image"
            )
        product = response.products[0]
        if category and category != product.product.category:
            raise InvalidInput(
                f"category {category!r} contradicts product {product_id!r}, which is {product.product.category!r}; "
                "leave category empty for catalogue products"
            )
        return common_pb2.ItemSource(image=product.image), product.product.category

    @staticmethod
    def _ids_only(request: LatentRequest, prefix: str) -> None:
        if request.HasField("resolved_audience"):
            raise InvalidInput(
                f"{prefix}resolved_audience is filled by the orchestrator from {prefix}audience; "
                f"send the user ids as {prefix}audience and leave {prefix}resolved_audience unset"
            )

    @staticmethod
    def _check_item(item: common_pb2.ItemSource, category: str, prefix: str) -> None:
        kind = item.WhichOneof("source")
        if kind is None:
            raise InvalidInput(f"{prefix}item must be a product_id or an image")
        if kind == "image" and not category:
            raise InvalidInput(f"{prefix}category is required with an uploaded {prefix}item.image")

    async def _resolved_design(
        self, request: latent_pb2.DesignRequest, context: grpc.aio.ServicerContext, prefix: str = ""
    ) -> latent_pb2.DesignRequest:
        """``request`` with its audience resolved: what LatentOptimizationService.Design takes."""
        self._ids_only(request, prefix)
        share = request.objective == latent_pb2.TOP_K_SHARE
        top_k = 0
        if share:
            top_k = int_in_range(request.top_k, 1, limits.MAX_K, f"{prefix}top_k", default=limits.DEFAULT_TOP_K)
        resolved = await self._audience(
            request.audience, context, f"{prefix}audience", top_k, request.category if share else ""
        )
        forwarded = latent_pb2.DesignRequest()
        forwarded.CopyFrom(request)
        forwarded.ClearField("audience")
        forwarded.resolved_audience.CopyFrom(resolved)
        if share:
            forwarded.top_k = top_k
        return forwarded

    async def _resolved_item_request(
        self, request: ItemRequest, context: grpc.aio.ServicerContext, prefix: str = ""
    ) -> ItemRequest:
        """``request`` with its audience and item resolved (concurrently): what the latent service takes."""
        self._ids_only(request, prefix)
        self._check_item(request.item, request.category, prefix)
        results: list[Any] = await all_or_nothing(
            [
                self._audience(request.audience, context, f"{prefix}audience"),
                self._item(request.item, request.category, context, f"{prefix}item"),
            ]
        )
        resolved: latent_pb2.ResolvedAudience = results[0]
        item, category = results[1]
        forwarded = type(request)()
        forwarded.CopyFrom(request)
        forwarded.ClearField("audience")
        forwarded.resolved_audience.CopyFrom(resolved)
        forwarded.item.CopyFrom(item)
        forwarded.category = category
        return forwarded

    # -- the latent service's capabilities, addressed by ids ---------------------------------------

    async def Design(
        self, request: latent_pb2.DesignRequest, context: grpc.aio.ServicerContext
    ) -> latent_pb2.DesignResponse:
        forwarded = await self._resolved_design(request, context)
        async with step("latent.Design"):
            response: latent_pb2.DesignResponse = await self.down.latent.Design(
                forwarded, timeout=self._timeout(context)
            )
        return response

    async def Alter(
        self, request: latent_pb2.AlterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[latent_pb2.AlterProgress]:
        forwarded = await self._resolved_item_request(request, context)
        call = self.down.latent.Alter(forwarded, timeout=self._timeout(context))
        try:
            async with step("latent.Alter"):
                async for message in call:
                    yield message
        finally:
            call.cancel()  # no-op when the stream ended; stops the latent work when this call is cancelled

    async def SellerShifts(
        self, request: latent_pb2.SellerShiftsRequest, context: grpc.aio.ServicerContext
    ) -> latent_pb2.SellerShiftsResponse:
        forwarded = await self._resolved_item_request(request, context)
        async with step("latent.SellerShifts"):
            response: latent_pb2.SellerShiftsResponse = await self.down.latent.SellerShifts(
                forwarded, timeout=self._timeout(context)
            )
        return response

    # -- flows ----------------------------------------------------------------------------------------

    async def _preferences(
        self, audience: common_pb2.Audience, product_ids: Sequence[str], context: grpc.aio.ServicerContext
    ) -> list[float]:
        """The audience's preference for each product (ScoreItems in batches of its limit)."""
        scores: list[float] = []
        for start in range(0, len(product_ids), limits.MAX_SCORE_ITEMS):
            chunk = product_ids[start : start + limits.MAX_SCORE_ITEMS]
            request = scoring_pb2.ScoreItemsRequest(
                audience=audience, items=[common_pb2.ItemSource(product_id=p) for p in chunk]
            )
            async with step("scoring.ScoreItems"):
                response = await self.down.scoring.ScoreItems(request, timeout=self._timeout(context))
            scores.extend(s.score for s in sorted(response.scores, key=lambda s: s.item_index))
        return scores

    async def _nearest(
        self,
        image: common_pb2.ImagePayload,
        k: int,
        categories: Sequence[str],
        context: grpc.aio.ServicerContext,
        exclude: Sequence[str] = (),
    ) -> list[common_pb2.ScoredProduct]:
        request = retrieval_pb2.SearchByImageRequest(
            image=image,
            k=k,
            filter=retrieval_pb2.SearchFilter(categories=list(categories), exclude_product_ids=list(exclude)),
        )
        async with step("retrieval.SearchByImage"):
            response = await self.down.retrieval.SearchByImage(request, timeout=self._timeout(context))
        return list(response.hits)

    async def DesignAndShop(
        self, request: orchestrator_pb2.DesignAndShopRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.DesignAndShopResponse:
        if not request.HasField("design"):
            raise InvalidInput("design is required (a DesignRequest)")
        k = int_in_range(
            request.products_per_design, 1, limits.MAX_PRODUCTS_PER_DESIGN, "products_per_design", default=5
        )
        forwarded = await self._resolved_design(request.design, context, "design.")
        async with step("latent.Design"):
            designed = await self.down.latent.Design(forwarded, timeout=self._timeout(context))
        nearest = await all_or_nothing(
            self._nearest(d.generated.image, k, [d.generated.category], context) for d in designed.designs
        )
        ids = [hit.product.product_id for hits in nearest for hit in hits]
        preference = iter(await self._preferences(request.design.audience, ids, context))
        response = orchestrator_pb2.DesignAndShopResponse()
        for design, hits in zip(designed.designs, nearest, strict=True):
            result = response.results.add(design=design)
            for hit in hits:  # score: the audience's preference; similarity: the image similarity to the design
                result.nearest_products.add(product=hit.product, score=next(preference), similarity=hit.score)
        return response

    async def SellerFeedback(
        self, request: orchestrator_pb2.SellerFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.SellerFeedbackResponse:
        if not request.HasField("shifts"):
            raise InvalidInput("shifts is required (a SellerShiftsRequest)")
        k = int_in_range(request.competitors_per_variant, 0, limits.MAX_COMPETITORS, "competitors_per_variant")
        forwarded = await self._resolved_item_request(request.shifts, context, "shifts.")
        async with step("latent.SellerShifts"):
            shifts = await self.down.latent.SellerShifts(forwarded, timeout=self._timeout(context))
        variants = sorted(shifts.variants, key=lambda v: v.preference_shift, reverse=True)
        category = shifts.base.category
        own = [request.shifts.item.product_id] if request.shifts.item.product_id else []
        competitors: list[list[common_pb2.ScoredProduct]] = [[] for _ in range(len(variants) + 1)]
        if k:
            images = [shifts.base.image, *(v.generated.image for v in variants)]
            competitors = await all_or_nothing(self._nearest(img, k, [category], context, own) for img in images)
        response = orchestrator_pb2.SellerFeedbackResponse(
            base=shifts.base, base_preference=shifts.base_preference, item_competitors=competitors[0]
        )
        for variant, found in zip(variants, competitors[1:], strict=True):
            response.variants.add(variant=variant, competitors=found)
        return response

    async def MultimodalShop(
        self, request: orchestrator_pb2.MultimodalShopRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.MultimodalShopResponse:
        if not request.HasField("search"):
            raise InvalidInput("search is required (a SearchByImageAndTextRequest)")
        async with step("retrieval.SearchByImageAndText"):
            found = await self.down.retrieval.SearchByImageAndText(request.search, timeout=self._timeout(context))
        hits = list(found.hits)
        response = orchestrator_pb2.MultimodalShopResponse(synthetic_query=found.synthetic_query)
        if request.HasField("user") and request.user.user_id and hits:
            audience = common_pb2.Audience(user=request.user)
            preference = await self._preferences(audience, [h.product.product_id for h in hits], context)
            order = sorted(range(len(hits)), key=lambda i: -preference[i])  # stable: ties keep similarity order
            hits = [hits[i] for i in order]
            response.preference.extend(preference[i] for i in order)
        response.hits.extend(hits)
        return response

    async def IndexCatalogue(
        self, request_iterator: AsyncIterator[catalogue_pb2.IndexProductsRequest], context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.IndexCatalogueResponse:
        queues: dict[str, asyncio.Queue[catalogue_pb2.IndexProductsRequest | None]] = {
            "scoring": asyncio.Queue(maxsize=4),
            "retrieval": asyncio.Queue(maxsize=4),
        }
        received = ReceivedIds()
        finished: dict[str, catalogue_pb2.IndexProductsResponse] = {}

        async def feed(name: str) -> AsyncIterator[catalogue_pb2.IndexProductsRequest]:
            while (message := await queues[name].get()) is not None:
                yield message

        async def forward(name: str, stub: IndexingStub) -> catalogue_pb2.IndexProductsResponse:
            async with step(f"{name}.IndexProducts"):
                response: catalogue_pb2.IndexProductsResponse = await stub.IndexProducts(
                    feed(name), timeout=remaining_s(context, self.down.stream_cap_s)
                )
            finished[name] = response
            return response

        async def pump() -> None:
            async for message in request_iterator:
                received.add(message)
                for queue in queues.values():
                    await queue.put(message)
            for queue in queues.values():
                await queue.put(None)

        stores = self._index_stores()
        try:
            _, scoring, retrieval = await all_or_nothing(
                [pump(), *(forward(name, stub) for name, stub in stores.items())]
            )
        except Exception as exc:
            await self._report_failed_index(exc, received, finished, context)
            raise  # not reached: the report aborts the call
        return orchestrator_pb2.IndexCatalogueResponse(
            scoring=scoring,
            retrieval=retrieval,
            received=len(received),
            stores=[store_report(name, received.ids, received.ids) for name in stores],
        )

    def _index_stores(self) -> dict[str, IndexingStub]:
        return {"scoring": self.down.scoring, "retrieval": self.down.retrieval}

    async def _report_failed_index(
        self,
        exc: Exception,
        received: ReceivedIds,
        finished: dict[str, catalogue_pb2.IndexProductsResponse],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Asks both stores which received products they hold, then fails the call with ``exc``'s status,
        a summary in its message and the report in the trailers (REPORT_TRAILER)."""
        status, error_id = map_exception(exc)
        if error_id is not None:
            log.error("unexpected error", method="IndexCatalogue", error_id=error_id, exc_info=exc)
        failed = exc.step.split(".")[0] if isinstance(exc, DownstreamCallFailed) else ""
        left = context.time_remaining()
        budget = REPORT_CHECK_S if left is None else min(REPORT_CHECK_S, float(left) - 0.1)
        reports = await asyncio.gather(
            *(
                self._store_report(name, stub, received, budget, status.message if name == failed else "")
                for name, stub in self._index_stores().items()
            )
        )
        report = orchestrator_pb2.IndexCatalogueResponse(received=len(received), stores=reports)
        for name, response in finished.items():
            getattr(report, name).CopyFrom(response)
        summary = "; ".join(describe_report(r, len(received)) for r in reports)
        if received.overflowed:
            summary += f" (the check covers the first {len(received)} distinct products)"
        log.warning(
            "catalogue indexing failed",
            method="IndexCatalogue",
            code=status.code.name,
            received=len(received),
            landed=summary,
        )
        message = (
            f"{status.message}. What landed: {summary}. Per-store report in the trailer {REPORT_TRAILER}; "
            "repair with `couturier index --reconcile` or index again"
        )
        await context.abort(
            status.code, status_message(message), trailing_metadata=((REPORT_TRAILER, report.SerializeToString()),)
        )

    @staticmethod
    async def _store_report(
        name: str, stub: IndexingStub, received: ReceivedIds, budget_s: float, error: str
    ) -> orchestrator_pb2.StoreIndexReport:
        ids = received.ids
        if not ids:
            return store_report(name, [], [], error)
        if budget_s <= 0:
            return unknown_report(name, "not checked: the call's deadline passed")
        present: list[str] = []
        try:
            async with asyncio.timeout(budget_s):
                for start in range(0, len(ids), limits.MAX_LIST_IDS):
                    reply = await stub.ListProductIds(
                        catalogue_pb2.ListProductIdsRequest(
                            encoder_version=received.encoder_version,
                            product_ids=ids[start : start + limits.MAX_LIST_IDS],
                        ),
                        timeout=budget_s,
                    )
                    present.extend(reply.product_ids)
        except grpc.aio.AioRpcError as check_failed:
            reason = f"{check_failed.code().name}: {check_failed.details() or ''}"
            return unknown_report(name, f"{error + '; ' if error else ''}not checked ({reason[:200]})")
        except TimeoutError:
            return unknown_report(name, f"{error + '; ' if error else ''}not checked within {budget_s:.1f}s")
        report = store_report(name, ids, present, error)
        if not report.complete and not error:
            report.error = "stopped when the other store failed"
        return report


def build(settings: OrchestratorSettings) -> ServiceDefinition:
    targets = {
        "scoring": settings.scoring_target,
        "latent": settings.latent_target,
        "retrieval": settings.retrieval_target,
    }
    security = downstream_security(settings)
    probes = {
        name: GrpcHealthProbe(
            target,
            reconnect=settings.channel_options,
            credentials=security.credentials,
            server_name=security.server_name,
        )
        for name, target in targets.items()
    }
    downstream = Downstream(settings, security)

    async def close() -> None:
        await asyncio.gather(*(probe.close() for probe in probes.values()))
        await downstream.close()

    return ServiceDefinition(
        key="orchestrator",
        service_names=[SERVICE_NAME],
        register=lambda server: orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
            OrchestratorServicer(downstream), server
        ),
        checks=[DependencyCheck(name, probe) for name, probe in probes.items()],
        on_stop=close,
        shown_settings={
            **{f"{name}_target": target for name, target in targets.items()},
            "downstream_transport": "plaintext"
            if security.credentials is None
            else ("mtls" if settings.downstream_tls_cert_file else "tls"),
            "downstream_token": "sent" if security.token else "none",
        },
    )
