"""Scoring service (DVBPR). Skeleton: validates requests; scoring arrives with the trained models."""

from __future__ import annotations

import grpc

from couturier.services.common import limits
from couturier.services.common.config import ScoringSettings
from couturier.services.common.errors import NotYetImplemented
from couturier.services.common.server import ServiceDefinition
from couturier.services.common.validation import audience_users, bounded_list, int_in_range, item_source, require_id
from couturier.v1 import scoring_pb2, scoring_pb2_grpc

SERVICE_NAME = scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name
_MISSING = "needs the trained DVBPR item encoder and user vectors, which this build does not serve yet"


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    async def ScoreItems(self, request: scoring_pb2.ScoreItemsRequest, context: grpc.aio.ServicerContext) -> scoring_pb2.ScoreItemsResponse:  # noqa: N802
        audience_users(request.audience)
        int_in_range(len(request.items), 1, limits.MAX_SCORE_ITEMS, "number of items")
        for index, item in enumerate(request.items):
            item_source(item, f"items[{index}]")
        raise NotYetImplemented(f"ScoreItems {_MISSING}")

    async def Recommend(self, request: scoring_pb2.RecommendRequest, context: grpc.aio.ServicerContext) -> scoring_pb2.RecommendResponse:  # noqa: N802
        require_id(request.user.user_id, "user.user_id")
        int_in_range(request.k, 1, limits.MAX_K, "k")
        bounded_list(request.categories, limits.MAX_FILTER_VALUES, "categories")
        bounded_list(request.exclude_product_ids, limits.MAX_EXCLUDED_IDS, "exclude_product_ids")
        raise NotYetImplemented(f"Recommend {_MISSING}")


def build(settings: ScoringSettings) -> ServiceDefinition:
    return ServiceDefinition(
        key="scoring",
        service_names=[SERVICE_NAME],
        register=lambda server: scoring_pb2_grpc.add_ScoringServiceServicer_to_server(ScoringServicer(), server),
        shown_settings={"inference_backend": settings.inference_backend, "milvus_uri": settings.milvus_uri},
    )
