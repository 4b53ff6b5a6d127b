"""Catalogue indexing shared by the scoring and retrieval services: images -> encoder -> Milvus.

Each service indexes the same ``ProductToIndex`` stream into its own embedding space: one collection
per (encoder, version), vectors upserted by product id with the encoder name and version. A search
names the encoder version that embedded its query; a collection of another version is never mixed in.
With an image store (retrieval), each product's PNG at the encoder's resolution is kept there, written
before its vector (a failed batch leaves at most an unused image, never a vector without its image) and
deleted after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import numpy as np

from couturier.services.common import limits
from couturier.services.common.encoders import ImageEncoder
from couturier.services.common.errors import InvalidInput
from couturier.services.common.images import decode_image, encode_png, to_model_input
from couturier.services.common.product_images import ProductImageStore
from couturier.services.common.validation import bounded_list, require_id
from couturier.services.common.vectors import EmbeddingSpace, Hit, ProductVector, VectorStore
from couturier.v1 import catalogue_pb2, common_pb2


def model_version(space: EmbeddingSpace) -> common_pb2.ModelVersion:
    return common_pb2.ModelVersion(name=space.model, version=space.version)


def scored_products(hits: Sequence[Hit]) -> list[common_pb2.ScoredProduct]:
    return [
        common_pb2.ScoredProduct(
            product=common_pb2.Product(product_id=h.product_id, category=h.category, colour=h.colour), score=h.score
        )
        for h in hits
    ]


class CatalogueIndex:
    """The product vectors of one encoder in one vector store."""

    def __init__(
        self,
        encoder: ImageEncoder,
        store: VectorStore,
        *,
        metric: str,
        index: str = "FLAT",
        images: ProductImageStore | None = None,
    ) -> None:
        self.encoder = encoder
        self.images = images  # keeps a PNG of each product at the encoder's resolution (None: no images)
        self.store = store
        self.metric = metric
        self.index = index
        self._dims: dict[str, int] = {}

    def space(self, version: str, dim: int) -> EmbeddingSpace:
        return EmbeddingSpace(self.encoder.model, version, dim, metric=self.metric, index=self.index)  # type: ignore[arg-type]

    async def space_of(self, version: str) -> EmbeddingSpace:
        """The space of ``version``, its dimension read from the model's metadata (then cached)."""
        if version not in self._dims:
            self._dims[version] = await self.encoder.dim(version)
        return self.space(version, self._dims[version])

    async def embed(self, images: list[np.ndarray], requested_version: str = "") -> tuple[np.ndarray, EmbeddingSpace]:
        version = await self.encoder.version(requested_version)
        vectors = await self.encoder.encode(images, version)
        self._dims[version] = int(vectors.shape[1])
        return vectors, self.space(version, int(vectors.shape[1]))

    async def index_stream(
        self, requests: AsyncIterator[catalogue_pb2.IndexProductsRequest]
    ) -> catalogue_pb2.IndexProductsResponse:
        upserted = 0
        space: EmbeddingSpace | None = None
        requested: str | None = None
        message = -1
        async for message, request in _enumerate(requests):
            if requested is None:
                requested = request.encoder_version
            elif request.encoder_version != requested:
                raise InvalidInput(
                    f"message {message} asks for encoder_version {request.encoder_version!r}, earlier ones for "
                    f"{requested!r}; one stream indexes with one version ({upserted} products already written)"
                )
            products = _validated_batch(request, message)
            images = [
                decode_image(p.image.data, f"message {message}: products[{i}].image") for i, p in enumerate(products)
            ]
            vectors, space = await self.embed(images, requested)
            await self.store.ensure(space)
            if self.images is not None:
                size = await self.encoder.image_size(space.version)
                await self.images.put_many(
                    {p.product.product_id: thumbnail(image, size) for p, image in zip(products, images, strict=True)}
                )
            items = [
                ProductVector(p.product.product_id, vector, p.product.category, p.product.colour)
                for p, vector in zip(products, vectors, strict=True)
            ]
            upserted += await self.store.upsert(space, items)
        if message < 0:
            raise InvalidInput("the stream carried no IndexProductsRequest; send 1 or more batches of products")
        assert space is not None
        return catalogue_pb2.IndexProductsResponse(
            upserted=upserted, total=await self.store.count(space), encoder=model_version(space)
        )

    async def delete(self, request: catalogue_pb2.DeleteProductsRequest) -> catalogue_pb2.DeleteProductsResponse:
        ids = bounded_list(request.product_ids, limits.MAX_DELETE_IDS, "product_ids", at_least_one=True)
        found: set[str] = set()
        for version in await self.store.versions(self.encoder.model):
            space = await self._stored_space(version)
            present = await self.store.get(space, ids)
            if present:
                await self.store.delete(space, list(present))
                found.update(present)
        if self.images is not None:  # every requested id: also removes images a failed indexing left behind
            await self.images.delete_many(ids)
        return catalogue_pb2.DeleteProductsResponse(
            deleted=len(found), not_found=[i for i in dict.fromkeys(ids) if i not in found]
        )

    async def stats(self, request: catalogue_pb2.GetIndexStatsRequest) -> catalogue_pb2.IndexStats:
        version = await self.encoder.version(request.encoder_version)
        space = await self.space_of(version)
        versions = await self.store.versions(self.encoder.model)
        stats = catalogue_pb2.IndexStats(encoder=model_version(space), indexed_versions=versions)
        if version in versions:
            stats.products = await self.store.count(space)
            stats.per_category.update(await self.store.per_category(space))
        return stats

    async def _stored_space(self, version: str) -> EmbeddingSpace:
        """A stored version's space; its dimension comes from the store, not the (maybe unloaded) model."""
        dim = self._dims.get(version) or await self.store.dim(self.encoder.model, version)
        return self.space(version, dim)


def thumbnail(image: np.ndarray, size: int) -> bytes:
    """PNG of an RGB uint8 image at ``size`` x ``size`` (what the models see)."""
    return encode_png(to_model_input([image], size)[0].transpose(1, 2, 0))


async def _enumerate(
    requests: AsyncIterator[catalogue_pb2.IndexProductsRequest],
) -> AsyncIterator[tuple[int, catalogue_pb2.IndexProductsRequest]]:
    index = 0
    async for request in requests:
        yield index, request
        index += 1


def _validated_batch(request: catalogue_pb2.IndexProductsRequest, message: int) -> list[catalogue_pb2.ProductToIndex]:
    products = list(request.products)
    if not 1 <= len(products) <= limits.MAX_INDEX_BATCH:
        raise InvalidInput(
            f"message {message} has {len(products)} products; send 1-{limits.MAX_INDEX_BATCH} per message"
        )
    seen: set[str] = set()
    for i, p in enumerate(products):
        where = f"message {message}: products[{i}]"
        pid = require_id(p.product.product_id, f"{where}.product.product_id")
        require_id(p.product.category, f"{where}.product.category")
        if len(p.product.colour) > limits.MAX_ID_LENGTH:
            raise InvalidInput(f"{where}.product.colour is longer than {limits.MAX_ID_LENGTH} characters")
        if pid in seen:
            raise InvalidInput(f"{where}: product {pid!r} appears twice in one message")
        seen.add(pid)
    return products
