"""Request limits enforced by every service: the one source of truth (the protos' comments repeat them).

Every string, bytes and repeated (or map) field of the contract has a cap: :data:`FIELD_LIMITS` names
the fields with their own cap (full field names), every other field gets the default of its kind
(:data:`MAX_STRING_CHARS`, :data:`MAX_BYTES`, :data:`MAX_REPEATED`; each string of a repeated string
field: :data:`MAX_LIST_STRING_CHARS`). The request guard of every server
(``interceptors.RequestGuardInterceptor`` with ``validation.check_field_limits``) enforces them on each
request message, streamed ones included, before any handler runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

MAX_IMAGE_BYTES: Final = 4 * 1024 * 1024
MAX_IMAGE_SIDE: Final = 1024
#: The image formats the contract accepts (Pillow's format names; a multi-picture JPEG, Pillow's MPO, is a JPEG).
IMAGE_FORMATS: Final = ("PNG", "JPEG", "WEBP")
MAX_ID_LENGTH: Final = 128
MAX_GROUP_USERS: Final = 1024
MAX_SCORE_ITEMS: Final = 256
MAX_K: Final = 1000
MAX_FILTER_VALUES: Final = 64
MAX_EXCLUDED_IDS: Final = 1000
MAX_DESIGNS: Final = 16
#: Prior samples per design that Design picks its starting points from (DesignRequest.start_candidates).
MAX_START_CANDIDATES: Final = 32
MAX_SHIFTS: Final = 12
MAX_OPT_STEPS: Final = 500
MAX_INVERSION_STEPS: Final = 2000
MAX_RESTARTS: Final = 16
MAX_TEXT_CHARS: Final = 256
MAX_INDEX_BATCH: Final = 512
MAX_DELETE_IDS: Final = 10_000
#: ListProductIds: ids per page (page_size), its default, and ids asked about at once (product_ids).
MAX_LIST_PAGE: Final = 10_000
DEFAULT_LIST_PAGE: Final = 1000
MAX_LIST_IDS: Final = 1000
MAX_RADIUS: Final = 8.0
MAX_WEIGHT: Final = 100.0
MAX_REPORT_EVERY: Final = 100
MAX_PRODUCTS_PER_DESIGN: Final = 100
MAX_COMPETITORS: Final = 50

#: Default k of TOP_K_SHARE (DesignRequest.top_k = 0): the latent service optimises for it and the
#: orchestrator resolves the users' k-th best scores for it.
DEFAULT_TOP_K: Final = 10

# -- field caps of the contract (what a service accepts) -------------------------------------------

#: Default cap of a string field: characters.
MAX_STRING_CHARS: Final = 256
#: Default cap of a bytes field: bytes (the only bytes field is ImagePayload.data).
MAX_BYTES: Final = MAX_IMAGE_BYTES
#: Default cap of a repeated or map field: entries.
MAX_REPEATED: Final = 1024
#: Cap of each string of a repeated string field (the contract's lists of ids, categories, colours).
MAX_LIST_STRING_CHARS: Final = MAX_ID_LENGTH
#: A model version is a number (Triton's are int64: at most 19 digits).
MAX_VERSION_CHARS: Final = 19
#: Floats of one vector (a user vector, a latent).
MAX_VECTOR_VALUES: Final = 4096
#: Entries of Product.attributes.
MAX_ATTRIBUTES: Final = 64

#: Field-level caps by full field name (characters, bytes or entries, by the field's kind); every field
#: not named here has the default of its kind. The .proto comments state each of them.
FIELD_LIMITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        # common.proto
        "couturier.v1.ImagePayload.data": MAX_IMAGE_BYTES,
        "couturier.v1.ModelVersion.name": MAX_ID_LENGTH,
        "couturier.v1.ModelVersion.version": MAX_VERSION_CHARS,
        "couturier.v1.Product.product_id": MAX_ID_LENGTH,
        "couturier.v1.Product.category": MAX_ID_LENGTH,
        "couturier.v1.Product.colour": MAX_ID_LENGTH,
        "couturier.v1.Product.attributes": MAX_ATTRIBUTES,
        "couturier.v1.UserRef.user_id": MAX_ID_LENGTH,
        "couturier.v1.UserRef.liked_product_ids": MAX_EXCLUDED_IDS,
        "couturier.v1.UserGroup.users": MAX_GROUP_USERS,
        "couturier.v1.UserGroup.segment_name": MAX_ID_LENGTH,
        "couturier.v1.Latent.values": MAX_VECTOR_VALUES,
        "couturier.v1.GeneratedImage.category": MAX_ID_LENGTH,
        "couturier.v1.ItemSource.product_id": MAX_ID_LENGTH,
        # catalogue.proto
        "couturier.v1.IndexProductsRequest.products": MAX_INDEX_BATCH,
        "couturier.v1.IndexProductsRequest.encoder_version": MAX_VERSION_CHARS,
        "couturier.v1.DeleteProductsRequest.product_ids": MAX_DELETE_IDS,
        "couturier.v1.GetIndexStatsRequest.encoder_version": MAX_VERSION_CHARS,
        "couturier.v1.ListProductIdsRequest.encoder_version": MAX_VERSION_CHARS,
        "couturier.v1.ListProductIdsRequest.page_token": MAX_ID_LENGTH,
        "couturier.v1.ListProductIdsRequest.product_ids": MAX_LIST_IDS,
        # scoring.proto
        "couturier.v1.ScoreItemsRequest.items": MAX_SCORE_ITEMS,
        "couturier.v1.RecommendRequest.categories": MAX_FILTER_VALUES,
        "couturier.v1.RecommendRequest.exclude_product_ids": MAX_EXCLUDED_IDS,
        "couturier.v1.DescribeUsersRequest.category": MAX_ID_LENGTH,
        # retrieval.proto
        "couturier.v1.SearchFilter.categories": MAX_FILTER_VALUES,
        "couturier.v1.SearchFilter.colours": MAX_FILTER_VALUES,
        "couturier.v1.SearchFilter.exclude_product_ids": MAX_EXCLUDED_IDS,
        "couturier.v1.SearchByImageAndTextRequest.text": MAX_TEXT_CHARS,
        "couturier.v1.GetProductsRequest.product_ids": MAX_SCORE_ITEMS,
        # latent.proto
        "couturier.v1.ResolvedUser.user_id": MAX_ID_LENGTH,
        "couturier.v1.ResolvedUser.vector": MAX_VECTOR_VALUES,
        "couturier.v1.ResolvedAudience.users": MAX_GROUP_USERS,
        "couturier.v1.ResolvedAudience.segment_name": MAX_ID_LENGTH,
        "couturier.v1.ResolvedAudience.category": MAX_ID_LENGTH,
        "couturier.v1.DesignRequest.category": MAX_ID_LENGTH,
        "couturier.v1.AlterRequest.category": MAX_ID_LENGTH,
        "couturier.v1.SellerShiftsRequest.category": MAX_ID_LENGTH,
    }
)

# -- what errors and logs carry of caller input -------------------------------------------------

#: Characters of a status message (longer ones are cut, with a marker saying how much was cut).
MAX_STATUS_MESSAGE_CHARS: Final = 1000
#: UTF-8 bytes of a status message (it travels in the trailers, percent-encoded, under gRPC's
#: metadata limit of 8 KiB).
MAX_STATUS_MESSAGE_BYTES: Final = 2000
#: Characters of a caller value quoted in a message (errors.brief).
MAX_QUOTED_CHARS: Final = 64
#: Characters of one value in a log line (longer ones are cut with a marker).
MAX_LOG_VALUE_CHARS: Final = 1000
#: Characters of a rendered traceback in a log line (head and tail are kept).
MAX_LOG_TRACEBACK_CHARS: Final = 20_000
