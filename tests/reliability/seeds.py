"""A valid request for each RPC of the fuzzed stack (reliability.stack): what the fuzzing mutates so
that it reaches past validation. An RPC without a seed is fuzzed with random messages only."""

from __future__ import annotations

from google.protobuf.message import Message

from couturier.services.common.models import ITEM_ENCODER
from couturier.v1 import catalogue_pb2, common_pb2, latent_pb2, orchestrator_pb2, retrieval_pb2, scoring_pb2

from .stack import product_image

IMAGE = common_pb2.ImagePayload(data=product_image(7), mime_type="image/png")
USER = common_pb2.Audience(user=common_pb2.UserRef(user_id="u1"))
GROUP = common_pb2.Audience(
    group=common_pb2.UserGroup(users=[common_pb2.UserRef(user_id="u2"), common_pb2.UserRef(user_id="u3")])
)
RESOLVED = latent_pb2.ResolvedAudience(
    users=[latent_pb2.ResolvedUser(user_id="u1", vector=[0.1, -0.2, 0.3, 0.0, 0.5, -0.1])],  # K = FakeDims.item_dim
    model=common_pb2.ModelVersion(name=ITEM_ENCODER, version="1"),
)
FAST = latent_pb2.OptimizerParams(steps=2)
FAST_INVERSION = latent_pb2.InversionParams(steps=2, restarts=1)
INDEX = catalogue_pb2.IndexProductsRequest(
    products=[
        catalogue_pb2.ProductToIndex(
            product=common_pb2.Product(product_id="p9", category="shoes", colour="red", attributes={"brand": "x"}),
            image=IMAGE,
        )
    ]
)
SEARCH_TEXT = retrieval_pb2.SearchByImageAndTextRequest(image=IMAGE, text="same but in red", k=3)
ORCHESTRATED_SHIFTS = latent_pb2.SellerShiftsRequest(
    item=common_pb2.ItemSource(product_id="p0"), audience=GROUP, n=2, optimizer=FAST, inversion=FAST_INVERSION
)

SCORING = "/couturier.v1.ScoringService/"
RETRIEVAL = "/couturier.v1.VisualRetrievalService/"
LATENT = "/couturier.v1.LatentOptimizationService/"
ORCHESTRATOR = "/couturier.v1.OrchestratorService/"

#: Method path -> a valid request (for a client stream: one valid message of it).
SEEDS: dict[str, Message] = {
    f"{SCORING}ScoreItems": scoring_pb2.ScoreItemsRequest(
        audience=GROUP, items=[common_pb2.ItemSource(product_id="p0"), common_pb2.ItemSource(image=IMAGE)]
    ),
    f"{SCORING}Recommend": scoring_pb2.RecommendRequest(user=common_pb2.UserRef(user_id="u1"), k=3),
    f"{SCORING}DescribeUsers": scoring_pb2.DescribeUsersRequest(audience=USER, top_k=2, category="shoes"),
    f"{SCORING}IndexProducts": INDEX,
    f"{SCORING}DeleteProducts": catalogue_pb2.DeleteProductsRequest(product_ids=["p9", "p404"]),
    f"{SCORING}GetIndexStats": catalogue_pb2.GetIndexStatsRequest(encoder_version="1"),
    f"{RETRIEVAL}IndexProducts": INDEX,
    f"{RETRIEVAL}DeleteProducts": catalogue_pb2.DeleteProductsRequest(product_ids=["p9", "p404"]),
    f"{RETRIEVAL}SearchByImage": retrieval_pb2.SearchByImageRequest(
        image=IMAGE, k=3, filter=retrieval_pb2.SearchFilter(categories=["shoes"], exclude_product_ids=["p1"])
    ),
    f"{RETRIEVAL}SearchByImageAndText": SEARCH_TEXT,
    f"{RETRIEVAL}GetProducts": retrieval_pb2.GetProductsRequest(product_ids=["p0", "p404"]),
    f"{RETRIEVAL}GetIndexStats": catalogue_pb2.GetIndexStatsRequest(),
    f"{LATENT}Design": latent_pb2.DesignRequest(resolved_audience=RESOLVED, category="tops", n=1, optimizer=FAST),
    f"{LATENT}Alter": latent_pb2.AlterRequest(
        resolved_audience=RESOLVED,
        item=common_pb2.ItemSource(image=IMAGE),
        category="shoes",
        inversion=FAST_INVERSION,
        optimizer=FAST,
    ),
    f"{LATENT}SellerShifts": latent_pb2.SellerShiftsRequest(
        resolved_audience=RESOLVED,
        item=common_pb2.ItemSource(image=IMAGE),
        category="shoes",
        n=2,
        inversion=FAST_INVERSION,
        optimizer=FAST,
    ),
    f"{ORCHESTRATOR}Design": latent_pb2.DesignRequest(audience=GROUP, category="tops", n=1, optimizer=FAST),
    f"{ORCHESTRATOR}Alter": latent_pb2.AlterRequest(
        audience=USER, item=common_pb2.ItemSource(product_id="p0"), inversion=FAST_INVERSION, optimizer=FAST
    ),
    f"{ORCHESTRATOR}SellerShifts": ORCHESTRATED_SHIFTS,
    f"{ORCHESTRATOR}DesignAndShop": orchestrator_pb2.DesignAndShopRequest(
        design=latent_pb2.DesignRequest(audience=USER, category="shoes", n=1, optimizer=FAST), products_per_design=2
    ),
    f"{ORCHESTRATOR}SellerFeedback": orchestrator_pb2.SellerFeedbackRequest(
        shifts=ORCHESTRATED_SHIFTS, competitors_per_variant=2
    ),
    f"{ORCHESTRATOR}MultimodalShop": orchestrator_pb2.MultimodalShopRequest(
        search=SEARCH_TEXT, user=common_pb2.UserRef(user_id="u1")
    ),
    f"{ORCHESTRATOR}IndexCatalogue": INDEX,
}
