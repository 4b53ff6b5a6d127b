"""The flat call graph: the latent service takes resolved inputs only (user vectors, item images) and
refuses ids with INVALID_ARGUMENT naming the replacement; the orchestrator resolves ids (scoring
DescribeUsers, retrieval GetProducts) and offers Design, Alter and SellerShifts by ids.

Fast: the real latent and orchestrator services over real gRPC on 127.0.0.1, with the fake inference
backend and fake scoring / retrieval servicers (no trained models, no Milvus).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from couturier.services.common import limits
from couturier.services.common.config import LatentSettings, ScoringSettings
from couturier.services.common.errors import UnknownEntity
from couturier.services.common.images import encode_png
from couturier.services.common.models import PREF_LOOP
from couturier.services.common.server import ServiceDefinition, ServiceHost
from couturier.services.common.validation import audience_users
from couturier.services.latent import service as latent_service
from couturier.services.registry import make_host
from couturier.v1 import (
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
from support.fakes import FakeInferenceBackend

MODEL = common_pb2.ModelVersion(name="item_encoder", version="7")
RNG = np.random.default_rng(3)
USERS = {f"u{i}": RNG.normal(0, 1, 6).astype(np.float32).tolist() for i in range(1, 5)}  # K = FakeDims.item_dim
KTH = {user: float(i) * 0.1 - 0.2 for i, user in enumerate(USERS)}  # k-th best scores (any values)
PRODUCTS = {  # product id -> (category, PNG)
    f"p{i}": (category, encode_png(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    for i, category in enumerate(["shoes", "shoes", "bags", "tops"])
}


# -- fake downstream services ----------------------------------------------------------------------


class FakeScoring(scoring_pb2_grpc.ScoringServiceServicer):
    """DescribeUsers over USERS (KTH as k-th best scores when top_k > 0); ScoreItems: 0.5 for everything."""

    def __init__(self) -> None:
        self.described: list[scoring_pb2.DescribeUsersRequest] = []

    async def DescribeUsers(
        self, request: scoring_pb2.DescribeUsersRequest, context: Any
    ) -> scoring_pb2.DescribeUsersResponse:
        self.described.append(request)
        refs = audience_users(request.audience)
        unknown = [ref.user_id for ref in refs if ref.user_id not in USERS]
        if unknown:
            raise UnknownEntity(f"unknown users without liked products: {', '.join(map(repr, unknown))}")
        response = scoring_pb2.DescribeUsersResponse(model=MODEL)
        for ref in refs:
            profile = response.users.add(user_id=ref.user_id, vector=USERS[ref.user_id])
            if request.top_k:
                profile.best_score, profile.kth_best_score = 1.0, KTH[ref.user_id]
        return response

    async def ScoreItems(self, request: scoring_pb2.ScoreItemsRequest, context: Any) -> scoring_pb2.ScoreItemsResponse:
        response = scoring_pb2.ScoreItemsResponse(model=MODEL)
        for index, item in enumerate(request.items):
            response.scores.add(product_id=item.product_id, item_index=index, score=0.5)
        return response


class FakeRetrieval(retrieval_pb2_grpc.VisualRetrievalServiceServicer):
    """GetProducts and SearchByImage over PRODUCTS."""

    def __init__(self) -> None:
        self.fetched: list[list[str]] = []

    async def GetProducts(
        self, request: retrieval_pb2.GetProductsRequest, context: Any
    ) -> retrieval_pb2.GetProductsResponse:
        self.fetched.append(list(request.product_ids))
        response = retrieval_pb2.GetProductsResponse()
        for pid in request.product_ids:
            if pid in PRODUCTS:
                category, png = PRODUCTS[pid]
                response.products.add(
                    product=common_pb2.Product(product_id=pid, category=category),
                    image=common_pb2.ImagePayload(data=png, mime_type="image/png"),
                )
            else:
                response.not_found.append(pid)
        return response

    async def SearchByImage(
        self, request: retrieval_pb2.SearchByImageRequest, context: Any
    ) -> retrieval_pb2.SearchResponse:
        wanted, excluded = set(request.filter.categories), set(request.filter.exclude_product_ids)
        hits = [
            pid for pid, (category, _) in PRODUCTS.items() if category in (wanted or {category}) and pid not in excluded
        ]
        response = retrieval_pb2.SearchResponse()
        for rank, pid in enumerate(hits[: request.k]):
            product = common_pb2.Product(product_id=pid, category=PRODUCTS[pid][0])
            response.hits.add(product=product, score=1.0 - rank / 10)
        return response


class SlowBackend:
    """The fake backend with a delay before each ``infer`` (0: none), counting the calls it started."""

    def __init__(self, inner: FakeInferenceBackend) -> None:
        self.inner, self.name, self.delay, self.started = inner, "slow-fake", 0.0, 0

    async def infer(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        self.started += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return await self.inner.infer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Stack:
    backend: SlowBackend
    scoring: FakeScoring
    retrieval: FakeRetrieval
    hosts: dict[str, ServiceHost] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def _channel(self, key: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.hosts[key].address)
        self.channels.append(channel)
        return channel

    @property
    def latent(self) -> latent_pb2_grpc.LatentOptimizationServiceStub:
        return latent_pb2_grpc.LatentOptimizationServiceStub(self._channel("latent"))

    @property
    def orchestrator(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        return orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel("orchestrator"))


def _fake_host(key: str, name: str, register: Callable[[grpc.aio.Server], None]) -> ServiceHost:
    return ServiceHost(
        ServiceDefinition(key=key, service_names=[name], register=register),
        ScoringSettings(port=0, health_interval_s=5.0),
    )


@pytest.fixture
async def stack(fake_backend: FakeInferenceBackend) -> AsyncIterator[Stack]:
    state = Stack(SlowBackend(fake_backend), FakeScoring(), FakeRetrieval())
    state.hosts["scoring"] = _fake_host(
        "scoring",
        "couturier.v1.ScoringService",
        lambda s: scoring_pb2_grpc.add_ScoringServiceServicer_to_server(state.scoring, s),
    )
    state.hosts["retrieval"] = _fake_host(
        "retrieval",
        "couturier.v1.VisualRetrievalService",
        lambda s: retrieval_pb2_grpc.add_VisualRetrievalServiceServicer_to_server(state.retrieval, s),
    )
    settings = LatentSettings(port=0, health_interval_s=5.0)
    state.hosts["latent"] = ServiceHost(latent_service.build(settings, backend=state.backend), settings)  # type: ignore[arg-type]
    try:
        for host in state.hosts.values():
            await host.start()
        state.hosts["orchestrator"] = make_host(
            "orchestrator",
            port=0,
            health_interval_s=5.0,
            **{f"{key}_target": state.hosts[key].address for key in ("scoring", "latent", "retrieval")},
        )
        await state.hosts["orchestrator"].start()
        yield state
    finally:
        for channel in state.channels:
            await channel.close()
        for host in reversed(list(state.hosts.values())):
            await host.stop(grace_s=0)


async def expect(call: Any, code: grpc.StatusCode, *needles: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    details = info.value.details() or ""
    assert info.value.code() == code, details
    for needle in needles:
        assert needle in details, details
    return details


def audience(*users: str, segment: str = "") -> common_pb2.Audience:
    if len(users) == 1 and not segment:
        return common_pb2.Audience(user=common_pb2.UserRef(user_id=users[0]))
    return common_pb2.Audience(
        group=common_pb2.UserGroup(users=[common_pb2.UserRef(user_id=u) for u in users], segment_name=segment)
    )


def resolved(*users: str, top_k: int = 0, category: str = "") -> latent_pb2.ResolvedAudience:
    """What the orchestrator sends the latent service for ``users``."""
    out = latent_pb2.ResolvedAudience(model=MODEL, top_k=top_k, category=category)
    for user in users:
        out.users.add(
            user_id=user,
            vector=USERS[user],
            best_score=1.0 if top_k else 0.0,
            kth_best_score=KTH[user] if top_k else 0.0,
        )
    return out


def upload(pid: str) -> common_pb2.ItemSource:
    return common_pb2.ItemSource(image=common_pb2.ImagePayload(data=PRODUCTS[pid][1], mime_type="image/png"))


FAST_INVERSION = latent_pb2.InversionParams(steps=5, restarts=2)


# -- the latent service: resolved inputs only --------------------------------------------------------


def test_latent_settings_name_no_other_service() -> None:
    assert not [f for f in LatentSettings.model_fields if f.endswith("_target")]
    definition = latent_service.build(LatentSettings(), backend=FakeInferenceBackend())  # type: ignore[arg-type]
    assert {check.name for check in definition.checks} == {"pref_grad", "inv_grad", "shift_grad"} | {
        "pref_loop",
        "inv_loop",
        "shift_loop",
    }


async def test_latent_refuses_user_ids_naming_the_replacement(stack: Stack) -> None:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    ids = audience("u1", "u2")
    latent = stack.latent
    await expect(
        latent.Design(latent_pb2.DesignRequest(audience=ids, category="tops")),
        bad,
        "does not resolve user ids",
        "resolved_audience",
        "ScoringService.DescribeUsers",
        "OrchestratorService.Design",
    )
    await expect(
        latent.Alter(latent_pb2.AlterRequest(audience=ids, item=upload("p0"), category="shoes")),
        bad,
        "resolved_audience",
        "ScoringService.DescribeUsers",
        "OrchestratorService.Alter",
    )
    await expect(
        latent.SellerShifts(latent_pb2.SellerShiftsRequest(audience=ids, item=upload("p0"), category="shoes")),
        bad,
        "resolved_audience",
        "ScoringService.DescribeUsers",
        "OrchestratorService.SellerShifts",
    )
    await expect(
        latent.Design(latent_pb2.DesignRequest(category="tops")),
        bad,
        "resolved_audience is required",
        "OrchestratorService.Design",
    )
    assert not stack.scoring.described and not stack.retrieval.fetched  # the latent service calls nobody
    assert stack.backend.started == 0


async def test_latent_refuses_product_ids_naming_the_replacement(stack: Stack) -> None:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    product = common_pb2.ItemSource(product_id="p0")
    await expect(
        stack.latent.Alter(latent_pb2.AlterRequest(resolved_audience=resolved("u1"), item=product)),
        bad,
        "does not resolve product ids",
        "'p0'",
        "item.image",
        "VisualRetrievalService.GetProducts",
        "OrchestratorService.Alter",
    )
    shifts = latent_pb2.SellerShiftsRequest(resolved_audience=resolved("u1"), item=product)
    await expect(
        stack.latent.SellerShifts(shifts), bad, "VisualRetrievalService.GetProducts", "OrchestratorService.SellerShifts"
    )
    await expect(
        stack.latent.Alter(latent_pb2.AlterRequest(resolved_audience=resolved("u1"), item=upload("p0"))),
        bad,
        "category is required",
    )
    assert not stack.retrieval.fetched


async def test_latent_validates_the_resolved_audience(stack: Stack) -> None:
    def design(audience: latent_pb2.ResolvedAudience, **fields: Any) -> latent_pb2.DesignRequest:
        return latent_pb2.DesignRequest(resolved_audience=audience, category="tops", **fields)

    no_model = resolved("u1")
    no_model.ClearField("model")
    ragged = resolved("u1", "u2")
    del ragged.users[1].vector[-1]
    nan = resolved("u1", "u2")
    nan.users[1].vector[2] = math.nan
    no_id = resolved("u1")
    no_id.users[0].user_id = ""
    cases = [
        (design(latent_pb2.ResolvedAudience(model=MODEL)), "resolved_audience.users is empty"),
        (design(no_model), "resolved_audience.model is required"),
        (design(ragged), "resolved_audience.users[1].vector has 5 values but users[0] has 6"),
        (design(nan), "resolved_audience.users[1].vector[2] is nan"),
        (design(no_id), "resolved_audience.users[0].user_id is required"),
        # TOP_K_SHARE needs the thresholds of its own top_k and category
        (design(resolved("u1"), objective=latent_pb2.TOP_K_SHARE), "top_k=10", "ScoringService.DescribeUsers(top_k=10"),
        (design(resolved("u1", top_k=5, category="tops"), objective=latent_pb2.TOP_K_SHARE), "holds top_k=5"),
        (design(resolved("u1", top_k=10, category="bags"), objective=latent_pb2.TOP_K_SHARE), "category 'bags'"),
        (design(resolved("u1"), n=limits.MAX_DESIGNS + 1), "n must be between"),
        (design(resolved("u1"), start_candidates=limits.MAX_START_CANDIDATES + 1), "start_candidates must be between"),
        (design(resolved("u1"), start_candidates=-1), "start_candidates must be between"),
    ]
    for request, *needles in cases:
        await expect(stack.latent.Design(request), grpc.StatusCode.INVALID_ARGUMENT, *needles)


async def test_latent_designs_for_a_resolved_audience(stack: Stack) -> None:
    got = await stack.latent.Design(
        latent_pb2.DesignRequest(resolved_audience=resolved("u1", "u2", "u3"), category="tops", n=2, seed=5)
    )
    assert len(got.designs) == 2 and got.scorer == MODEL and got.generator.name == PREF_LOOP  # the loop optimiser
    assert all(len(d.per_user_preference) == 3 for d in got.designs)
    # start_candidates = 1: the designs start from the seed's first samples, and they differ from the
    # default's, which start from the best of 16 per design
    plain = await stack.latent.Design(
        latent_pb2.DesignRequest(
            resolved_audience=resolved("u1", "u2", "u3"), category="tops", n=2, seed=5, start_candidates=1
        )
    )
    assert {d.preference_before for d in plain.designs} != {d.preference_before for d in got.designs}
    assert max(d.preference_before for d in got.designs) >= max(d.preference_before for d in plain.designs)
    share = await stack.latent.Design(
        latent_pb2.DesignRequest(
            resolved_audience=resolved("u1", "u2", "u3", top_k=4, category="tops"),
            category="tops",
            n=2,
            seed=5,
            objective=latent_pb2.TOP_K_SHARE,
            top_k=4,
        )
    )
    tau = np.array([KTH[u] for u in ("u1", "u2", "u3")])
    for design in share.designs:
        assert design.objective == pytest.approx(float(np.mean(np.asarray(design.per_user_preference) >= tau)))


# -- the orchestrator: the latent capabilities by ids ------------------------------------------------


async def test_orchestrator_design_resolves_user_ids(stack: Stack) -> None:
    request = latent_pb2.DesignRequest(audience=audience("u1", "u2", segment="runners"), category="tops", n=2, seed=9)
    got = await stack.orchestrator.Design(request)
    (asked,) = stack.scoring.described
    assert asked.audience == request.audience and asked.top_k == 0 and not asked.category  # MEAN: vectors only
    direct = await stack.latent.Design(
        latent_pb2.DesignRequest(resolved_audience=resolved("u1", "u2"), category="tops", n=2, seed=9)
    )
    assert got == direct  # the same designs as the latent service gives for the resolved audience
    assert got.scorer == MODEL


async def test_orchestrator_design_top_k_share_resolves_thresholds(stack: Stack) -> None:
    request = latent_pb2.DesignRequest(
        audience=audience("u1", "u2", "u3"), category="bags", n=1, seed=2, objective=latent_pb2.TOP_K_SHARE
    )
    got = await stack.orchestrator.Design(request)
    (asked,) = stack.scoring.described
    assert (asked.top_k, asked.category) == (limits.DEFAULT_TOP_K, "bags")
    direct = await stack.latent.Design(
        latent_pb2.DesignRequest(
            resolved_audience=resolved("u1", "u2", "u3", top_k=limits.DEFAULT_TOP_K, category="bags"),
            category="bags",
            n=1,
            seed=2,
            objective=latent_pb2.TOP_K_SHARE,
        )
    )
    assert got == direct
    await stack.orchestrator.Design(
        latent_pb2.DesignRequest(
            audience=audience("u1"), category="bags", n=1, objective=latent_pb2.TOP_K_SHARE, top_k=3
        )
    )
    assert stack.scoring.described[-1].top_k == 3
    await expect(
        stack.orchestrator.Design(
            latent_pb2.DesignRequest(
                audience=audience("u1"), category="bags", objective=latent_pb2.TOP_K_SHARE, top_k=limits.MAX_K + 1
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k must be between",
    )


async def test_orchestrator_alter_resolves_the_product_and_streams_through(stack: Stack) -> None:
    request = latent_pb2.AlterRequest(
        audience=audience("u2"),
        item=common_pb2.ItemSource(product_id="p2"),
        inversion=FAST_INVERSION,
        optimizer=latent_pb2.OptimizerParams(steps=3),
    )
    messages = [m async for m in stack.orchestrator.Alter(request)]
    assert stack.retrieval.fetched == [["p2"]] and len(stack.scoring.described) == 1
    phases = [m.phase for m in messages]
    assert phases == sorted(phases) and phases[-1] == latent_pb2.AlterProgress.DONE
    assert {m.current.category for m in messages} == {"bags"}  # the product's own category
    direct = [
        m
        async for m in stack.latent.Alter(
            latent_pb2.AlterRequest(
                resolved_audience=resolved("u2"),
                item=upload("p2"),
                category="bags",
                inversion=FAST_INVERSION,
                optimizer=latent_pb2.OptimizerParams(steps=3),
            )
        )
    ]
    assert messages == direct
    # an upload is passed on as it is (no product look-up)
    uploaded = [
        m
        async for m in stack.orchestrator.Alter(
            latent_pb2.AlterRequest(
                audience=audience("u2"),
                item=upload("p2"),
                category="bags",
                inversion=FAST_INVERSION,
                optimizer=latent_pb2.OptimizerParams(steps=3),
            )
        )
    ]
    assert uploaded == direct and stack.retrieval.fetched == [["p2"]]


async def test_orchestrator_seller_shifts_resolve_ids(stack: Stack) -> None:
    request = latent_pb2.SellerShiftsRequest(
        item=common_pb2.ItemSource(product_id="p0"),
        audience=audience("u1", "u3"),
        n=2,
        inversion=FAST_INVERSION,
        optimizer=latent_pb2.OptimizerParams(steps=3),
    )
    got = await stack.orchestrator.SellerShifts(request)
    direct = await stack.latent.SellerShifts(
        latent_pb2.SellerShiftsRequest(
            item=upload("p0"),
            category="shoes",
            resolved_audience=resolved("u1", "u3"),
            n=2,
            inversion=FAST_INVERSION,
            optimizer=latent_pb2.OptimizerParams(steps=3),
        )
    )
    assert got == direct and len(got.variants) == 2 and got.base.category == "shoes" and got.scorer == MODEL


async def test_orchestrator_flows_keep_working_with_ids(stack: Stack) -> None:
    shop = await stack.orchestrator.DesignAndShop(
        orchestrator_pb2.DesignAndShopRequest(
            design=latent_pb2.DesignRequest(audience=audience("u1"), category="shoes", n=2), products_per_design=2
        )
    )
    assert len(shop.results) == 2 and all(len(r.nearest_products) == 2 for r in shop.results)
    assert all(p.score == 0.5 and p.product.category == "shoes" for r in shop.results for p in r.nearest_products)
    feedback = await stack.orchestrator.SellerFeedback(
        orchestrator_pb2.SellerFeedbackRequest(
            shifts=latent_pb2.SellerShiftsRequest(
                item=common_pb2.ItemSource(product_id="p0"),
                audience=audience("u1", "u2"),
                n=2,
                inversion=FAST_INVERSION,
            ),
            competitors_per_variant=3,
        )
    )
    assert len(feedback.variants) == 2 and feedback.base.category == "shoes"
    assert [c.product.product_id for c in feedback.item_competitors] == ["p1"]  # its own product is excluded


async def test_orchestrator_names_the_failed_step(stack: Stack) -> None:
    orchestrator, bad = stack.orchestrator, grpc.StatusCode.INVALID_ARGUMENT
    await expect(
        orchestrator.Design(latent_pb2.DesignRequest(audience=audience("u404"), category="tops")),
        grpc.StatusCode.NOT_FOUND,
        "scoring.DescribeUsers failed (NOT_FOUND)",
        "'u404'",
    )
    missing = common_pb2.ItemSource(product_id="p-404")
    await expect(
        orchestrator.Alter(latent_pb2.AlterRequest(audience=audience("u1"), item=missing)),
        grpc.StatusCode.NOT_FOUND,
        "product 'p-404' is not in the catalogue index",
    )
    await expect(
        orchestrator.SellerShifts(
            latent_pb2.SellerShiftsRequest(
                audience=audience("u1"), item=common_pb2.ItemSource(product_id="p0"), category="tops"
            )
        ),
        bad,
        "category 'tops' contradicts product 'p0', which is 'shoes'",
    )
    await expect(
        orchestrator.SellerFeedback(
            orchestrator_pb2.SellerFeedbackRequest(
                shifts=latent_pb2.SellerShiftsRequest(audience=audience("u1"), item=upload("p0"))
            )
        ),
        bad,
        "shifts.category is required",
    )
    await expect(
        orchestrator.DesignAndShop(
            orchestrator_pb2.DesignAndShopRequest(design=latent_pb2.DesignRequest(category="tops"))
        ),
        bad,
        "design.audience must name a user or a group",
    )
    await expect(
        orchestrator.Design(
            latent_pb2.DesignRequest(audience=audience("u1"), resolved_audience=resolved("u1"), category="tops")
        ),
        bad,
        "filled by the orchestrator",
    )
    # the latent service's own validation comes back with the step named
    await expect(
        orchestrator.Design(latent_pb2.DesignRequest(audience=audience("u1"), category="hats")),
        bad,
        "latent.Design failed (INVALID_ARGUMENT): unknown category 'hats'",
    )
    too_often = latent_pb2.AlterRequest(
        audience=audience("u1"), item=upload("p0"), category="shoes", report_every=limits.MAX_REPORT_EVERY + 1
    )
    await expect(
        orchestrator.Alter(too_often), bad, "latent.Alter failed (INVALID_ARGUMENT): report_every must be between"
    )


async def _settled(counter: Callable[[], int], interval_s: float = 0.2, timeout_s: float = 5.0) -> int:
    """The counter's value once it stopped moving for ``interval_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = counter()
    while loop.time() < deadline:
        await asyncio.sleep(interval_s)
        if counter() == last:
            return last
        last = counter()
    pytest.fail("the latent service kept running after the orchestrator call ended")


async def test_orchestrator_alter_cancellation_and_deadline_reach_the_latent_service(stack: Stack) -> None:
    stack.backend.delay = 0.01  # inversion of 2000 steps: ~20 s if nothing stopped it
    request = latent_pb2.AlterRequest(
        audience=audience("u1"),
        item=common_pb2.ItemSource(product_id="p0"),
        inversion=latent_pb2.InversionParams(steps=limits.MAX_INVERSION_STEPS),
    )
    call = stack.orchestrator.Alter(request)
    first = await call.read()
    assert first.phase == latent_pb2.AlterProgress.INVERSION and first.step == 0
    call.cancel()
    stopped = await _settled(lambda: stack.backend.started)
    assert stopped < limits.MAX_INVERSION_STEPS // 4, stopped

    before = stack.backend.started
    await expect(stack.orchestrator.Alter(request, timeout=0.5), grpc.StatusCode.DEADLINE_EXCEEDED)
    stopped = await _settled(lambda: stack.backend.started)
    assert stopped - before < limits.MAX_INVERSION_STEPS // 4, stopped - before
