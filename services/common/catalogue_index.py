"""Catalogue indexing shared by the scoring and retrieval services: images -> encoder -> Milvus.

Each service indexes the same ``ProductToIndex`` stream into its own embedding space: one collection
per (encoder, version), vectors upserted by product id with the encoder name and version. A search
names the encoder version that embedded its query; a collection of another version is never mixed in.
With an image store (retrieval), each product's PNG at the encoder's resolution is kept there, written
before its vector (a failed batch leaves at most an unused image, never a vector without its image) and
deleted after it.

The orchestrator indexes one stream into both stores (IndexCatalogue); when either fails, it reports
per store what landed (:class:`ReceivedIds`, :func:`store_report`; the report travels in the trailing
metadata entry :data:`REPORT_TRAILER`, read back by :func:`read_report`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Final

import numpy as np

from couturier.services.common import limits
from couturier.services.common.encoders import ImageEncoder
from couturier.services.common.errors import InvalidInput, clip
from couturier.services.common.images import decode_image, encode_png, to_model_input
from couturier.services.common.product_images import ProductImageStore
from couturier.services.common.validation import bounded_list, int_in_range, require_id
from couturier.services.common.vectors import EmbeddingSpace, Hit, ProductVector, VectorStore
from couturier.v1 import catalogue_pb2, common_pb2, orchestrator_pb2

#: Trailing metadata entry of a failed IndexCatalogue: a serialized IndexCatalogueResponse (the report).
REPORT_TRAILER: Final = "couturier-index-report-bin"
#: Distinct product ids of one IndexCatalogue stream the report covers (memory: ~100 bytes each).
MAX_TRACKED_IDS: Final = 1_000_000
#: Missing ids a StoreIndexReport lists, and at most this many UTF-8 bytes of them: the report travels
#: in the trailers, which gRPC caps at 8 KiB with the status message.
MAX_REPORTED_MISSING: Final = 20
MAX_REPORTED_MISSING_BYTES: Final = 1024
#: Characters of a StoreIndexReport's error (the same trailers).
MAX_REPORT_ERROR_CHARS: Final = 300


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

    async def list_ids(self, request: catalogue_pb2.ListProductIdsRequest) -> catalogue_pb2.ListProductIdsResponse:
        """A page of the indexed ids of one version (ascending), or which of ``product_ids`` are indexed.

        An explicitly named version is read from the store alone (its model may be unloaded); a version
        the store does not hold lists nothing."""
        if len(request.encoder_version) > limits.MAX_VERSION_CHARS:
            raise InvalidInput(f"encoder_version is longer than {limits.MAX_VERSION_CHARS} characters")
        if len(request.page_token) > limits.MAX_ID_LENGTH:
            raise InvalidInput("page_token is not one this service handed out (use next_page_token as it is)")
        page_size = int_in_range(
            request.page_size, 1, limits.MAX_LIST_PAGE, "page_size", default=limits.DEFAULT_LIST_PAGE
        )
        asked = bounded_list(request.product_ids, limits.MAX_LIST_IDS, "product_ids")
        if asked and request.page_token:
            raise InvalidInput("page_token pages the full listing; with product_ids the answer is one page")
        version = request.encoder_version or await self.encoder.version()
        response = catalogue_pb2.ListProductIdsResponse(
            encoder=common_pb2.ModelVersion(name=self.encoder.model, version=version)
        )
        if version not in await self.store.versions(self.encoder.model):
            return response  # nothing indexed with this version
        space = await self._stored_space(version)
        if asked:
            present = await self.store.get(space, asked)
            response.product_ids.extend(i for i in dict.fromkeys(asked) if i in present)
            return response
        page = await self.store.list_ids(space, after=request.page_token, limit=page_size)
        response.product_ids.extend(page)
        if len(page) == page_size:
            response.next_page_token = page[-1]
        return response

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


# -- what landed where: the per-store report of IndexCatalogue ------------------------------------------


class ReceivedIds:
    """Distinct product ids of an indexing stream in arrival order (the first ``cap``), and its version."""

    def __init__(self, cap: int = MAX_TRACKED_IDS) -> None:
        self.cap = cap
        self.encoder_version = ""
        self.messages = 0
        self.overflowed = False  # more distinct ids arrived than are tracked
        self._ids: dict[str, None] = {}

    def add(self, message: catalogue_pb2.IndexProductsRequest) -> None:
        if not self.messages:
            self.encoder_version = message.encoder_version  # one stream indexes with one version
        self.messages += 1
        for product in message.products:
            pid = product.product.product_id
            if not pid or pid in self._ids:
                continue
            if len(self._ids) >= self.cap:
                self.overflowed = True
            else:
                self._ids[pid] = None

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def store_report(
    store: str, received: Sequence[str], present: Iterable[str], error: str = ""
) -> orchestrator_pb2.StoreIndexReport:
    """What ``store`` holds of the ``received`` ids, given the ids found in it (``present``): counts and
    the first missing ids (at most MAX_REPORTED_MISSING, and MAX_REPORTED_MISSING_BYTES of them)."""
    found = set(present)
    missing = [i for i in received if i not in found]
    listed: list[str] = []
    size = 0
    for pid in missing[:MAX_REPORTED_MISSING]:
        size += len(pid.encode("utf-8"))
        if size > MAX_REPORTED_MISSING_BYTES:
            break
        listed.append(pid)
    return orchestrator_pb2.StoreIndexReport(
        store=store,
        complete=not missing,
        indexed=len(received) - len(missing),
        missing_count=len(missing),
        missing_product_ids=listed,
        error=clip(error, MAX_REPORT_ERROR_CHARS),
    )


def unknown_report(store: str, error: str) -> orchestrator_pb2.StoreIndexReport:
    """The report of a store that could not be asked what it holds."""
    return orchestrator_pb2.StoreIndexReport(
        store=store, complete=False, indexed=0, missing_count=-1, error=clip(error, MAX_REPORT_ERROR_CHARS)
    )


def describe_report(report: orchestrator_pb2.StoreIndexReport, received: int) -> str:
    """One line for a status message or a log: ``scoring holds 4000 of 6000 received (2000 missing)``."""
    if report.missing_count < 0:
        return f"{report.store}: unknown ({report.error})"
    text = f"{report.store} holds {report.indexed} of {received} received"
    if report.missing_count:
        text += f" ({report.missing_count} missing, e.g. {', '.join(report.missing_product_ids[:3])})"
    return text


def read_report(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str | bytes] | None,
) -> orchestrator_pb2.IndexCatalogueResponse | None:
    """The per-store report a failed IndexCatalogue carries in its trailers (None when there is none)."""
    items = trailing_metadata.items() if isinstance(trailing_metadata, Mapping) else trailing_metadata or ()
    for key, value in items:
        if key == REPORT_TRAILER and isinstance(value, bytes):
            return orchestrator_pb2.IndexCatalogueResponse.FromString(value)
    return None
