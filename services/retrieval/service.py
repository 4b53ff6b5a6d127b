"""Visual retrieval service. Skeleton: validates requests; search arrives with the encoders and Milvus."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from couturier.services.common import limits
from couturier.services.common.config import RetrievalSettings
from couturier.services.common.errors import InvalidInput, NotYetImplemented
from couturier.services.common.images import decode_image
from couturier.services.common.server import ServiceDefinition
from couturier.services.common.validation import bounded_list, int_in_range, require_id
from couturier.v1 import retrieval_pb2, retrieval_pb2_grpc

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["VisualRetrievalService"].full_name
_MISSING = "needs the retrieval encoder and the vector store, which this build does not serve yet"


def validate_filter(search_filter: retrieval_pb2.SearchFilter) -> None:
    bounded_list(search_filter.categories, limits.MAX_FILTER_VALUES, "filter.categories")
    bounded_list(search_filter.colours, limits.MAX_FILTER_VALUES, "filter.colours")
    bounded_list(search_filter.exclude_product_ids, 1000, "filter.exclude_product_ids")


class RetrievalServicer(retrieval_pb2_grpc.VisualRetrievalServiceServicer):
    async def IndexProducts(self, request_iterator: AsyncIterator[retrieval_pb2.IndexProductsRequest], context: grpc.aio.ServicerContext) -> retrieval_pb2.IndexProductsResponse:  # noqa: N802
        async for batch in request_iterator:
            int_in_range(len(batch.products), 1, limits.MAX_INDEX_BATCH, "products per message")
            for index, entry in enumerate(batch.products):
                require_id(entry.product.product_id, f"products[{index}].product.product_id")
                decode_image(entry.image.data, f"products[{index}].image")
        raise NotYetImplemented(f"IndexProducts {_MISSING}")

    async def DeleteProducts(self, request: retrieval_pb2.DeleteProductsRequest, context: grpc.aio.ServicerContext) -> retrieval_pb2.DeleteProductsResponse:  # noqa: N802
        bounded_list(request.product_ids, limits.MAX_DELETE_IDS, "product_ids", at_least_one=True)
        raise NotYetImplemented(f"DeleteProducts {_MISSING}")

    async def SearchByImage(self, request: retrieval_pb2.SearchByImageRequest, context: grpc.aio.ServicerContext) -> retrieval_pb2.SearchResponse:  # noqa: N802
        decode_image(request.image.data)
        int_in_range(request.k, 1, limits.MAX_K, "k")
        validate_filter(request.filter)
        raise NotYetImplemented(f"SearchByImage {_MISSING}")

    async def SearchByImageAndText(self, request: retrieval_pb2.SearchByImageAndTextRequest, context: grpc.aio.ServicerContext) -> retrieval_pb2.SearchByImageAndTextResponse:  # noqa: N802
        decode_image(request.image.data)
        text = request.text.strip()
        if not text or len(text) > limits.MAX_TEXT_CHARS:
            raise InvalidInput(f"text must have 1-{limits.MAX_TEXT_CHARS} characters, got {len(text)}")
        int_in_range(request.k, 1, limits.MAX_K, "k")
        validate_filter(request.filter)
        raise NotYetImplemented(f"SearchByImageAndText {_MISSING}")

    async def GetIndexStats(self, request: retrieval_pb2.GetIndexStatsRequest, context: grpc.aio.ServicerContext) -> retrieval_pb2.IndexStats:  # noqa: N802
        raise NotYetImplemented(f"GetIndexStats {_MISSING}")


def build(settings: RetrievalSettings) -> ServiceDefinition:
    return ServiceDefinition(
        key="retrieval",
        service_names=[SERVICE_NAME],
        register=lambda server: retrieval_pb2_grpc.add_VisualRetrievalServiceServicer_to_server(RetrievalServicer(), server),
        shown_settings={"inference_backend": settings.inference_backend, "milvus_uri": settings.milvus_uri},
    )
