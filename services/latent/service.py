"""Latent optimization service. Skeleton: validates requests; optimisation arrives with the models."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from couturier.services.common import limits
from couturier.services.common.config import LatentSettings
from couturier.services.common.errors import NotYetImplemented
from couturier.services.common.server import ServiceDefinition
from couturier.services.common.validation import (
    audience_users,
    categorised_item,
    float_in_range,
    int_in_range,
    require_id,
)
from couturier.v1 import latent_pb2, latent_pb2_grpc

SERVICE_NAME = latent_pb2.DESCRIPTOR.services_by_name["LatentOptimizationService"].full_name
_MISSING = "needs the generator and gradient models, which this build does not serve yet"


def validate_optimizer(params: latent_pb2.OptimizerParams, field: str = "optimizer") -> None:
    int_in_range(params.steps, 1, limits.MAX_OPT_STEPS, f"{field}.steps", default=10)
    float_in_range(params.learning_rate, 0.0, 1.0, f"{field}.learning_rate", default=0.05, low_inclusive=False)
    float_in_range(params.realism_weight, 0.0, limits.MAX_WEIGHT, f"{field}.realism_weight", default=1.0)


def validate_inversion(params: latent_pb2.InversionParams, field: str = "inversion") -> None:
    int_in_range(params.steps, 1, limits.MAX_INVERSION_STEPS, f"{field}.steps", default=200)
    float_in_range(params.learning_rate, 0.0, 1.0, f"{field}.learning_rate", default=0.05, low_inclusive=False)
    int_in_range(params.restarts, 1, limits.MAX_RESTARTS, f"{field}.restarts", default=4)


class LatentServicer(latent_pb2_grpc.LatentOptimizationServiceServicer):
    async def Design(self, request: latent_pb2.DesignRequest, context: grpc.aio.ServicerContext) -> latent_pb2.DesignResponse:  # noqa: N802
        audience_users(request.audience)
        require_id(request.category, "category")
        int_in_range(request.n, 1, limits.MAX_DESIGNS, "n", default=4)
        int_in_range(request.top_k, 1, limits.MAX_K, "top_k", default=10)
        validate_optimizer(request.optimizer)
        raise NotYetImplemented(f"Design {_MISSING}")

    async def Alter(self, request: latent_pb2.AlterRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[latent_pb2.AlterProgress]:  # noqa: N802
        audience_users(request.audience)
        categorised_item(request.item, request.category)
        validate_inversion(request.inversion)
        validate_optimizer(request.optimizer)
        int_in_range(request.report_every, 1, limits.MAX_REPORT_EVERY, "report_every", default=1)
        raise NotYetImplemented(f"Alter {_MISSING}")
        yield latent_pb2.AlterProgress()  # pragma: no cover - makes this an async generator

    async def SellerShifts(self, request: latent_pb2.SellerShiftsRequest, context: grpc.aio.ServicerContext) -> latent_pb2.SellerShiftsResponse:  # noqa: N802
        categorised_item(request.item, request.category)
        audience_users(request.audience)
        int_in_range(request.n, 1, limits.MAX_SHIFTS, "n", default=6)
        float_in_range(request.radius, 0.0, limits.MAX_RADIUS, "radius", default=0.5, low_inclusive=False)
        float_in_range(request.diversity_weight, 0.0, limits.MAX_WEIGHT, "diversity_weight", default=1.0)
        validate_optimizer(request.optimizer)
        validate_inversion(request.inversion)
        raise NotYetImplemented(f"SellerShifts {_MISSING}")


def build(settings: LatentSettings) -> ServiceDefinition:
    return ServiceDefinition(
        key="latent",
        service_names=[SERVICE_NAME],
        register=lambda server: latent_pb2_grpc.add_LatentOptimizationServiceServicer_to_server(LatentServicer(), server),
        shown_settings={"inference_backend": settings.inference_backend},
    )
