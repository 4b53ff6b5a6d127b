"""Product vectors in Milvus: one store for milvus-lite (a ``.db`` path) and a Milvus server (``http://...``).

One collection per embedding space (model name + model version), e.g. ``item_encoder_v3``: the DVBPR
item vectors of the scoring service (raw inner products, metric IP) and the L2-normalised visual
embeddings of the retrieval service (IP or COSINE). Every row also stores the model name and version
that produced it, so a query vector from another encoder version is refused instead of silently
ranking against incompatible vectors (:func:`check_query_version`).

Modules: :mod:`.spaces` (spaces, rows, hits, version checks), :mod:`.filters` (filter expressions and
id / label checks), :mod:`.lite` (milvus-lite's one writer thread per file and its lock), :mod:`.batching`
(concurrent searches merged into one call), :mod:`.store` (:class:`VectorStore`). Modes, costs and
settings: docs/vector-store.md. Product images live in :mod:`couturier.services.common.product_images`.
"""

from couturier.services.common.vectors.batching import BatchStats, SearchBatcher
from couturier.services.common.vectors.filters import (
    MAX_EXCLUDED_IDS,
    MAX_FILTER_VALUES,
    MAX_LABEL_BYTES,
    MAX_PRODUCT_ID_BYTES,
    build_filter,
)
from couturier.services.common.vectors.spaces import (
    DEFAULT_NLIST,
    DEFAULT_NPROBE,
    MAX_COLLECTION_NAME,
    MAX_DIM,
    EmbeddingSpace,
    Hit,
    IndexType,
    Metric,
    ProductVector,
    VersionMismatch,
    check_query_version,
    collection_name,
    not_indexed,
)
from couturier.services.common.vectors.store import (
    CONSISTENCY,
    ID_BATCH,
    LOAD_TIMEOUT_S,
    MAX_SEARCH_QUERIES,
    MAX_TOPK,
    SCAN_BATCH,
    SEARCH_BATCH_MAX,
    SEARCH_BATCH_WAIT_S,
    SERVER_THREADS,
    WRITE_BATCH_BYTES,
    StoreSettings,
    VectorStore,
)

__all__ = [
    "CONSISTENCY",
    "DEFAULT_NLIST",
    "DEFAULT_NPROBE",
    "ID_BATCH",
    "LOAD_TIMEOUT_S",
    "MAX_COLLECTION_NAME",
    "MAX_DIM",
    "MAX_EXCLUDED_IDS",
    "MAX_FILTER_VALUES",
    "MAX_LABEL_BYTES",
    "MAX_PRODUCT_ID_BYTES",
    "MAX_SEARCH_QUERIES",
    "MAX_TOPK",
    "SCAN_BATCH",
    "SEARCH_BATCH_MAX",
    "SEARCH_BATCH_WAIT_S",
    "SERVER_THREADS",
    "WRITE_BATCH_BYTES",
    "BatchStats",
    "EmbeddingSpace",
    "Hit",
    "IndexType",
    "Metric",
    "ProductVector",
    "SearchBatcher",
    "StoreSettings",
    "VectorStore",
    "VersionMismatch",
    "build_filter",
    "check_query_version",
    "collection_name",
    "not_indexed",
]
