"""Visual retrieval service: InfoGAN-discriminator embeddings in Milvus, and multimodal search.

SearchByImage embeds the query with the retrieval encoder (L2-normalised, so inner product = cosine)
and searches the collection of that encoder version. SearchByImageAndText follows SynthTriplet: the
text change is embedded (MiniLM), the query generator turns (reference image, text vector) into a
synthetic query image, and that image is searched like any other; it is returned with the hits so
the caller can check what was searched for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np

from couturier.services.common import limits
from couturier.services.common.catalogue_index import CatalogueIndex, model_version, scored_products
from couturier.services.common.config import RetrievalSettings
from couturier.services.common.encoders import ImageEncoder
from couturier.services.common.errors import InvalidInput, PreconditionFailed
from couturier.services.common.health import DependencyCheck
from couturier.services.common.images import chw_png, decode_image, to_model_input
from couturier.services.common.inference import InferenceBackend, backend_for, model_check, shown_backend_settings
from couturier.services.common.models import QUERY_GENERATOR, RETRIEVAL_ENCODER, TEXT_ENCODER
from couturier.services.common.product_images import FileImageStore, ProductImageStore
from couturier.services.common.server import ServiceDefinition
from couturier.services.common.validation import bounded_list, int_in_range
from couturier.services.common.vectors import VectorStore
from couturier.services.retrieval.text_encoder import TextEncoder
from couturier.v1 import catalogue_pb2, common_pb2, retrieval_pb2, retrieval_pb2_grpc

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["VisualRetrievalService"].full_name


class Retrieval:
    def __init__(
        self, backend: InferenceBackend, catalogue: CatalogueIndex, text: TextEncoder, generator_pin: str = ""
    ) -> None:
        self.backend = backend
        self.catalogue = catalogue
        self.text = text
        self.generator_pin = generator_pin

    async def search(
        self, image: np.ndarray, k: int, search_filter: retrieval_pb2.SearchFilter
    ) -> tuple[list, common_pb2.ModelVersion]:
        """RGB uint8 image -> hits in the collection of the encoder version that embedded it."""
        categories = bounded_list(search_filter.categories, limits.MAX_FILTER_VALUES, "filter.categories")
        colours = bounded_list(search_filter.colours, limits.MAX_FILTER_VALUES, "filter.colours")
        excluded = bounded_list(
            search_filter.exclude_product_ids, limits.MAX_EXCLUDED_IDS, "filter.exclude_product_ids"
        )
        vectors, space = await self.catalogue.embed([image])
        hits = await self.catalogue.store.search(
            space, vectors, k, categories=categories, colours=colours, exclude_ids=excluded
        )
        return scored_products(hits[0]), model_version(space)

    async def synthesize(self, image: np.ndarray, text: str) -> tuple[np.ndarray, common_pb2.ModelVersion]:
        """SynthTriplet: (reference image, text change) -> synthetic query image (3, S, S) in [-1, 1]."""
        text_vector, _ = await self.text.encode(text)
        version = await self.backend.resolve_version(QUERY_GENERATOR, self.generator_pin)
        size = int((await self.backend.input_shapes(QUERY_GENERATOR, version))["reference"][-1])
        out = await self.backend.infer(
            QUERY_GENERATOR,
            {"reference": to_model_input([image], size), "text_embedding": text_vector},
            ["image"],
            version=version,
        )
        return np.clip(out["image"][0], -1.0, 1.0), common_pb2.ModelVersion(name=QUERY_GENERATOR, version=version)


#: Why SearchByImageAndText is refused when the deployment has no multimodal model.
MULTIMODAL_OFF = (
    "multimodal search is off in this deployment (COUTURIER_RETRIEVAL_MULTIMODAL=false): its models were "
    "trained on a dataset without an attribute usable for text changes (e.g. a colour column), so there is "
    "no query generator; use SearchByImage, or retrain on a dataset with such an attribute"
)


def _k(value: int) -> int:
    return int_in_range(value, 1, limits.MAX_K, "k")


class RetrievalServicer(retrieval_pb2_grpc.VisualRetrievalServiceServicer):
    def __init__(self, retrieval: Retrieval, *, multimodal: bool = True) -> None:
        self.retrieval = retrieval
        self.multimodal = multimodal

    async def IndexProducts(
        self, request_iterator: AsyncIterator[catalogue_pb2.IndexProductsRequest], context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.IndexProductsResponse:
        return await self.retrieval.catalogue.index_stream(request_iterator)

    async def DeleteProducts(
        self, request: catalogue_pb2.DeleteProductsRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.DeleteProductsResponse:
        return await self.retrieval.catalogue.delete(request)

    async def SearchByImage(
        self, request: retrieval_pb2.SearchByImageRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.SearchResponse:
        image = decode_image(request.image.data, "image")
        hits, encoder = await self.retrieval.search(image, _k(request.k), request.filter)
        return retrieval_pb2.SearchResponse(hits=hits, encoder=encoder)

    async def SearchByImageAndText(
        self, request: retrieval_pb2.SearchByImageAndTextRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.SearchByImageAndTextResponse:
        if not self.multimodal:
            raise PreconditionFailed(MULTIMODAL_OFF)
        image = decode_image(request.image.data, "image")
        text = request.text.strip()
        if not 1 <= len(text) <= limits.MAX_TEXT_CHARS:
            raise InvalidInput(f"text must have 1-{limits.MAX_TEXT_CHARS} characters, got {len(text)}")
        k = _k(request.k)
        synthetic, generator = await self.retrieval.synthesize(image, text)
        query = np.asarray(((synthetic.transpose(1, 2, 0) + 1.0) * 127.5).round(), np.uint8)
        hits, encoder = await self.retrieval.search(query, k, request.filter)
        return retrieval_pb2.SearchByImageAndTextResponse(
            synthetic_query=common_pb2.ImagePayload(data=chw_png(synthetic), mime_type="image/png"),
            hits=hits,
            query_generator=generator,
            encoder=encoder,
        )

    async def GetIndexStats(
        self, request: catalogue_pb2.GetIndexStatsRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.IndexStats:
        return await self.retrieval.catalogue.stats(request)

    async def ListProductIds(
        self, request: catalogue_pb2.ListProductIdsRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.ListProductIdsResponse:
        return await self.retrieval.catalogue.list_ids(request)

    async def GetProducts(
        self, request: retrieval_pb2.GetProductsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.GetProductsResponse:
        ids = bounded_list(request.product_ids, limits.MAX_SCORE_ITEMS, "product_ids", at_least_one=True)
        catalogue = self.retrieval.catalogue
        space = await catalogue.space_of(await catalogue.encoder.version())
        stored = await catalogue.store.get(space, ids)
        images = await catalogue.images.get_many(list(stored)) if catalogue.images is not None and stored else {}
        missing = [i for i in stored if i not in images]
        if missing:
            where = catalogue.images.describe() if catalogue.images is not None else "no product image store"
            raise PreconditionFailed(
                f"{len(missing)} indexed product(s) have no stored image in {where} (first: {missing[0]!r}); "
                "re-index them with `couturier index` (images are kept at indexing), and give every retrieval "
                "replica the same product_images_dir"
            )
        response = retrieval_pb2.GetProductsResponse(not_found=[i for i in dict.fromkeys(ids) if i not in stored])
        for product in stored.values():
            response.products.add(
                product=common_pb2.Product(
                    product_id=product.product_id, category=product.category, colour=product.colour
                ),
                image=common_pb2.ImagePayload(data=images[product.product_id], mime_type="image/png"),
            )
        return response


def build(
    settings: RetrievalSettings,
    *,
    backend: InferenceBackend | None = None,
    store: VectorStore | None = None,
    images: ProductImageStore | None = None,
) -> ServiceDefinition:
    """The retrieval service over ``settings``; ``backend`` / ``store`` / ``images`` replace the ones the
    settings describe (tests inject in-memory fakes). Either way the service closes them when it stops."""
    backend = backend if backend is not None else backend_for(settings)
    store = store if store is not None else VectorStore.from_settings(settings)
    images = images if images is not None else FileImageStore(settings.product_images_dir)
    catalogue = CatalogueIndex(
        ImageEncoder(backend, RETRIEVAL_ENCODER, settings.model_version(RETRIEVAL_ENCODER)),
        store,
        metric="IP",
        images=images,
    )
    retrieval = Retrieval(
        backend,
        catalogue,
        TextEncoder(backend, settings.tokenizer_json, settings.model_version(TEXT_ENCODER)),
        settings.model_version(QUERY_GENERATOR),
    )

    async def store_ready() -> str:
        await store.ping()
        return settings.milvus_uri

    async def tokenizer_ready() -> str:
        retrieval.text.tokenizer()
        return str(settings.tokenizer_json)

    models = (RETRIEVAL_ENCODER, TEXT_ENCODER, QUERY_GENERATOR) if settings.multimodal else (RETRIEVAL_ENCODER,)

    async def close() -> None:
        await backend.close()
        await store.close()
        await images.close()

    return ServiceDefinition(
        key="retrieval",
        service_names=[SERVICE_NAME],
        register=lambda server: retrieval_pb2_grpc.add_VisualRetrievalServiceServicer_to_server(
            RetrievalServicer(retrieval, multimodal=settings.multimodal), server
        ),
        checks=[
            *(model_check(backend, m, settings.model_version(m)) for m in models),
            DependencyCheck("vector_store", store_ready),
            DependencyCheck("product_images", images.ping),
            *([DependencyCheck("tokenizer", tokenizer_ready)] if settings.multimodal else []),
        ],
        on_stop=close,
        shown_settings={
            **shown_backend_settings(settings),
            "milvus_uri": settings.milvus_uri,
            "product_images_dir": settings.product_images_dir,
            "tokenizer_json": settings.tokenizer_json,
            "multimodal": str(settings.multimodal).lower(),
        },
    )
