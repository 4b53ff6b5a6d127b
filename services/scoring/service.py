"""Scoring service (DVBPR): score(u, i) = theta_u . Phi(image_i).

Item vectors Phi come from the item encoder on the model server and live in Milvus (metric IP, FLAT
index: exact maximum inner product search). User vectors come from training (one table per item
encoder version); unknown users with liked products are folded in (see ``common/users.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np

from couturier.services.common import limits
from couturier.services.common.catalogue_index import CatalogueIndex, model_version, scored_products
from couturier.services.common.config import ScoringSettings
from couturier.services.common.encoders import ImageEncoder
from couturier.services.common.errors import UnknownEntity
from couturier.services.common.health import DependencyCheck
from couturier.services.common.inference import InferenceBackend, backend_for, model_check, shown_backend_settings
from couturier.services.common.models import ITEM_ENCODER
from couturier.services.common.server import ServiceDefinition
from couturier.services.common.validation import (
    audience_users,
    bounded_list,
    int_in_range,
    item_source,
    require_id,
)
from couturier.services.common.vectors import EmbeddingSpace, VectorStore
from couturier.services.scoring.users import UserDirectory, UserTable, unknown_users_error
from couturier.v1 import catalogue_pb2, common_pb2, scoring_pb2, scoring_pb2_grpc

SERVICE_NAME = scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name


@dataclass(frozen=True)
class ResolvedUsers:
    ids: list[str]
    theta: np.ndarray  # (U, K)
    folded_in: list[bool]
    table: UserTable
    space: EmbeddingSpace


class Scoring:
    """The service's logic over an inference backend, a vector store and the user tables."""

    def __init__(
        self, backend: InferenceBackend, store: VectorStore, users: UserDirectory, pinned_version: str = ""
    ) -> None:
        self.backend = backend
        self.store = store
        self.users = users
        self.catalogue = CatalogueIndex(ImageEncoder(backend, ITEM_ENCODER, pinned_version), store, metric="IP")

    async def resolve_users(self, refs: list[common_pb2.UserRef]) -> ResolvedUsers:
        """Trained vectors, or fold-in from liked products; NOT_FOUND for unknown users without any."""
        version = await self.catalogue.encoder.version()
        table = self.users.table(version)
        space = self.catalogue.space(version, table.dim)
        thetas: list[np.ndarray | None] = [table.vector(ref.user_id) for ref in refs]
        need = [i for i, theta in enumerate(thetas) if theta is None]
        unknown = [refs[i].user_id for i in need if not refs[i].liked_product_ids]
        if unknown:
            raise unknown_users_error(unknown)
        if need:
            liked_ids = sorted({pid for i in need for pid in refs[i].liked_product_ids})
            stored = await self.store.get(space, liked_ids)
            missing = [pid for pid in liked_ids if pid not in stored]
            if missing:
                raise UnknownEntity(
                    f"liked products not in the catalogue index of {ITEM_ENCODER} v{version}: "
                    + ", ".join(repr(p) for p in missing[:10])
                )
            for i in need:
                liked = np.stack([stored[pid].vector for pid in refs[i].liked_product_ids])
                thetas[i] = table.fold_in(liked, refs[i].user_id)
        return ResolvedUsers(
            ids=[ref.user_id for ref in refs],
            theta=np.stack([t for t in thetas if t is not None]).astype(np.float32),
            folded_in=[i in need for i in range(len(refs))],
            table=table,
            space=space,
        )

    async def item_vectors(
        self, items: list[common_pb2.ItemSource], pixels: list[np.ndarray | None], space: EmbeddingSpace
    ) -> np.ndarray:
        """Item vectors: stored ones for product ids, encoded now for uploads (``pixels`` from item_source)."""
        vectors = np.zeros((len(items), space.dim), np.float32)
        ids = [item.product_id for item, image in zip(items, pixels, strict=True) if image is None]
        if ids:
            stored = await self.store.get(space, ids)
            missing = [pid for pid in dict.fromkeys(ids) if pid not in stored]
            if missing:
                raise UnknownEntity(
                    f"products not in the catalogue index of {space.model} v{space.version}: "
                    + ", ".join(repr(p) for p in missing[:10])
                )
        uploads = {i: image for i, image in enumerate(pixels) if image is not None}
        if uploads:
            vectors[list(uploads)] = await self.catalogue.encoder.encode(list(uploads.values()), space.version)
        for i, image in enumerate(pixels):
            if image is None:
                vectors[i] = stored[items[i].product_id].vector
        return vectors


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    def __init__(self, scoring: Scoring) -> None:
        self.scoring = scoring

    async def ScoreItems(
        self, request: scoring_pb2.ScoreItemsRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.ScoreItemsResponse:
        refs = audience_users(request.audience)
        int_in_range(len(request.items), 1, limits.MAX_SCORE_ITEMS, "number of items")
        pixels = [item_source(item, f"items[{index}]") for index, item in enumerate(request.items)]
        users = await self.scoring.resolve_users(refs)
        vectors = await self.scoring.item_vectors(list(request.items), pixels, users.space)
        per_user = vectors @ users.theta.T  # (items, users)
        response = scoring_pb2.ScoreItemsResponse(model=model_version(users.space))
        for index, item in enumerate(request.items):
            score = response.scores.add(
                product_id=item.product_id, item_index=index, score=float(per_user[index].mean())
            )
            if request.include_per_user_scores:
                score.per_user_scores.extend(per_user[index].tolist())
        return response

    async def Recommend(
        self, request: scoring_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.RecommendResponse:
        require_id(request.user.user_id, "user.user_id")
        bounded_list(request.user.liked_product_ids, limits.MAX_EXCLUDED_IDS, "user.liked_product_ids")
        k = int_in_range(request.k, 1, limits.MAX_K, "k")
        categories = bounded_list(request.categories, limits.MAX_FILTER_VALUES, "categories")
        excluded = bounded_list(request.exclude_product_ids, limits.MAX_EXCLUDED_IDS, "exclude_product_ids")
        users = await self.scoring.resolve_users([request.user])
        if not request.include_purchased:
            excluded = [*excluded, *users.table.purchased(request.user.user_id), *request.user.liked_product_ids]
        hits = await self.scoring.store.search(
            users.space, users.theta, k, categories=categories, exclude_ids=list(dict.fromkeys(excluded))
        )
        return scoring_pb2.RecommendResponse(
            products=scored_products(hits[0]), model=model_version(users.space), folded_in=users.folded_in[0]
        )

    async def DescribeUsers(
        self, request: scoring_pb2.DescribeUsersRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.DescribeUsersResponse:
        refs = audience_users(request.audience)
        top_k = int_in_range(request.top_k, 0, limits.MAX_K, "top_k")
        if request.category:
            require_id(request.category, "category")
        users = await self.scoring.resolve_users(refs)
        response = scoring_pb2.DescribeUsersResponse(model=model_version(users.space))
        hits = (
            await self.scoring.store.search(
                users.space, users.theta, top_k, categories=[request.category] if request.category else []
            )
            if top_k
            else [[] for _ in refs]
        )
        for user_id, theta, folded, user_hits in zip(users.ids, users.theta, users.folded_in, hits, strict=True):
            profile = response.users.add(user_id=user_id, vector=theta.tolist(), folded_in=folded)
            if user_hits:
                profile.best_score = user_hits[0].score
                profile.best_product_id = user_hits[0].product_id
                profile.kth_best_score = user_hits[-1].score
        return response

    async def IndexProducts(
        self, request_iterator: AsyncIterator[catalogue_pb2.IndexProductsRequest], context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.IndexProductsResponse:
        return await self.scoring.catalogue.index_stream(request_iterator)

    async def DeleteProducts(
        self, request: catalogue_pb2.DeleteProductsRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.DeleteProductsResponse:
        return await self.scoring.catalogue.delete(request)

    async def GetIndexStats(
        self, request: catalogue_pb2.GetIndexStatsRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.IndexStats:
        return await self.scoring.catalogue.stats(request)

    async def ListProductIds(
        self, request: catalogue_pb2.ListProductIdsRequest, context: grpc.aio.ServicerContext
    ) -> catalogue_pb2.ListProductIdsResponse:
        return await self.scoring.catalogue.list_ids(request)


def build(
    settings: ScoringSettings, *, backend: InferenceBackend | None = None, store: VectorStore | None = None
) -> ServiceDefinition:
    """The scoring service over ``settings``; ``backend`` / ``store`` replace the ones the settings
    describe (tests inject in-memory fakes). Either way the service closes them when it stops."""
    backend = backend if backend is not None else backend_for(settings)
    store = store if store is not None else VectorStore.from_settings(settings)
    scoring = Scoring(backend, store, UserDirectory(settings.user_vectors_dir), settings.model_version(ITEM_ENCODER))

    async def users_ready() -> str:
        version = await scoring.catalogue.encoder.version()
        table = scoring.users.table(version)
        return f"{len(table.user_ids)} users for {ITEM_ENCODER} v{version}"

    async def store_ready() -> str:
        await store.ping()
        return settings.milvus_uri

    async def close() -> None:
        await backend.close()
        await store.close()

    return ServiceDefinition(
        key="scoring",
        service_names=[SERVICE_NAME],
        register=lambda server: scoring_pb2_grpc.add_ScoringServiceServicer_to_server(ScoringServicer(scoring), server),
        checks=[
            model_check(backend, ITEM_ENCODER, settings.model_version(ITEM_ENCODER)),
            DependencyCheck("user_vectors", users_ready),
            DependencyCheck("vector_store", store_ready),
        ],
        on_stop=close,
        shown_settings={
            **shown_backend_settings(settings),
            "milvus_uri": settings.milvus_uri,
            "user_vectors_dir": settings.user_vectors_dir,
        },
    )
