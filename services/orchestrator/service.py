"""Orchestrator. Skeleton: its health follows the three downstream services; flows arrive later."""

from __future__ import annotations

import asyncio

import grpc

from couturier.services.common import limits
from couturier.services.common.config import OrchestratorSettings
from couturier.services.common.errors import InvalidInput, NotYetImplemented
from couturier.services.common.health import DependencyCheck, GrpcHealthProbe
from couturier.services.common.server import ServiceDefinition
from couturier.services.common.validation import int_in_range
from couturier.v1 import orchestrator_pb2, orchestrator_pb2_grpc

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
_MISSING = "needs the scoring, latent and retrieval flows, which this build does not serve yet"


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    async def DesignAndShop(self, request: orchestrator_pb2.DesignAndShopRequest, context: grpc.aio.ServicerContext) -> orchestrator_pb2.DesignAndShopResponse:  # noqa: N802
        if not request.HasField("design"):
            raise InvalidInput("design is required (a DesignRequest)")
        int_in_range(request.products_per_design, 1, limits.MAX_PRODUCTS_PER_DESIGN, "products_per_design", default=5)
        raise NotYetImplemented(f"DesignAndShop {_MISSING}")

    async def SellerFeedback(self, request: orchestrator_pb2.SellerFeedbackRequest, context: grpc.aio.ServicerContext) -> orchestrator_pb2.SellerFeedbackResponse:  # noqa: N802
        if not request.HasField("shifts"):
            raise InvalidInput("shifts is required (a SellerShiftsRequest)")
        int_in_range(request.competitors_per_variant, 0, limits.MAX_COMPETITORS, "competitors_per_variant")
        raise NotYetImplemented(f"SellerFeedback {_MISSING}")

    async def MultimodalShop(self, request: orchestrator_pb2.MultimodalShopRequest, context: grpc.aio.ServicerContext) -> orchestrator_pb2.MultimodalShopResponse:  # noqa: N802
        if not request.HasField("search"):
            raise InvalidInput("search is required (a SearchByImageAndTextRequest)")
        raise NotYetImplemented(f"MultimodalShop {_MISSING}")


def build(settings: OrchestratorSettings) -> ServiceDefinition:
    targets = {
        "scoring": settings.scoring_target,
        "latent": settings.latent_target,
        "retrieval": settings.retrieval_target,
    }
    probes = {name: GrpcHealthProbe(target) for name, target in targets.items()}

    async def close_probes() -> None:
        await asyncio.gather(*(probe.close() for probe in probes.values()))

    return ServiceDefinition(
        key="orchestrator",
        service_names=[SERVICE_NAME],
        register=lambda server: orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(OrchestratorServicer(), server),
        checks=[DependencyCheck(name, probe) for name, probe in probes.items()],
        on_stop=close_probes,
        shown_settings={f"{name}_target": target for name, target in targets.items()},
    )
