"""Embedding spaces and what the store keeps and returns: one collection per (model, version).

Every row stores the model name and version that produced it, so a query vector from another encoder
version is refused instead of silently ranking against incompatible vectors (:func:`check_query_version`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from couturier.services.common.errors import InvalidInput, PreconditionFailed

MAX_DIM: Final = 32_768  # Milvus FLOAT_VECTOR dimension limit
MAX_COLLECTION_NAME: Final = 255  # Milvus collection name length
DEFAULT_NLIST: Final = 128  # IVF_FLAT clusters (lite builds them per segment, clamped to the segment size)
DEFAULT_NPROBE: Final = 32  # IVF_FLAT clusters scanned per query

Metric = Literal["IP", "COSINE", "L2"]
IndexType = Literal["FLAT", "IVF_FLAT"]
_METRICS: Final = ("IP", "COSINE", "L2")
_INDEX_TYPES: Final = ("FLAT", "IVF_FLAT")
_MODEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VERSION = re.compile(r"[A-Za-z0-9]+")  # no "_": the last "_v" of a collection name separates model and version

# The fields of a collection.
_PK, _VECTOR, _CATEGORY, _COLOUR, _MODEL, _MODEL_VERSION = (
    "product_id",
    "vector",
    "category",
    "colour",
    "model",
    "model_version",
)
_SCALARS: Final = (_CATEGORY, _COLOUR, _MODEL, _MODEL_VERSION)


@dataclass(frozen=True)
class EmbeddingSpace:
    """Where the vectors of one encoder version live: one collection per (model, version).

    ``metric`` is the similarity the vectors are compared with: IP for DVBPR item vectors (raw inner
    products), IP or COSINE for L2-normalised embeddings. ``index`` FLAT is exact; IVF_FLAT scans
    ``nprobe`` of ``nlist`` clusters. HNSW is not offered (it loses recall on raw inner products).
    """

    model: str
    version: str
    dim: int
    metric: Metric = "IP"
    index: IndexType = "FLAT"
    nlist: int = DEFAULT_NLIST
    nprobe: int = DEFAULT_NPROBE

    def __post_init__(self) -> None:
        if not _MODEL_NAME.fullmatch(self.model):
            raise InvalidInput(f"model name {self.model!r} must be letters, digits and '_', not starting with a digit")
        if not _VERSION.fullmatch(self.version):
            raise InvalidInput(f"model version {self.version!r} must be letters and digits only (e.g. '3')")
        if not 1 <= self.dim <= MAX_DIM:
            raise InvalidInput(f"vector dimension must be between 1 and {MAX_DIM}, got {self.dim}")
        if self.metric not in _METRICS:
            raise InvalidInput(f"metric must be one of {', '.join(_METRICS)}, got {self.metric!r}")
        if self.index not in _INDEX_TYPES:
            raise InvalidInput(f"index must be one of {', '.join(_INDEX_TYPES)}, got {self.index!r}")
        if not 1 <= self.nlist <= 65_536:
            raise InvalidInput(f"nlist must be between 1 and 65536, got {self.nlist}")
        if not 1 <= self.nprobe <= self.nlist:
            raise InvalidInput(f"nprobe must be between 1 and nlist ({self.nlist}), got {self.nprobe}")
        if len(self.collection) > MAX_COLLECTION_NAME:
            raise InvalidInput(f"collection name {self.collection!r} is longer than {MAX_COLLECTION_NAME}")

    @property
    def collection(self) -> str:
        """The collection name, e.g. ``item_encoder_v3``."""
        return collection_name(self.model, self.version)

    def describe(self) -> str:
        return f"{self.model} v{self.version}"


def collection_name(model: str, version: str) -> str:
    return f"{model}_v{version}"


@dataclass(frozen=True)
class ProductVector:
    product_id: str
    vector: np.ndarray = field(repr=False)
    category: str = ""
    colour: str = ""


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is a similarity, higher is better: the inner product (IP), the
    cosine (COSINE), or the negated distance Milvus reports for L2 (squared Euclidean, except
    milvus-lite's IVF_FLAT which reports the Euclidean distance itself)."""

    product_id: str
    score: float
    category: str
    colour: str


class VersionMismatch(PreconditionFailed):
    """A query vector comes from another encoder version than the vectors it would be compared with."""


def check_query_version(space: EmbeddingSpace, query_model: str, query_version: str) -> None:
    """Refuse to search ``space`` with a vector produced by another model or model version."""
    if query_model == space.model and str(query_version) == space.version:
        return
    raise VersionMismatch(
        f"the query vector comes from {query_model} v{query_version} but the indexed vectors come from "
        f"{space.describe()}; vectors of different encoder versions cannot be compared. Re-index the "
        f"catalogue with {query_model} v{query_version} (`couturier index`), or pin the model version to "
        f"{space.version} so queries are encoded by the same version as the index"
    )


def not_indexed(space: EmbeddingSpace) -> PreconditionFailed:
    return _not_indexed(space.model, space.version)


def _not_indexed(model: str, version: str) -> PreconditionFailed:
    return PreconditionFailed(
        f"no vectors are indexed for {model} v{version} (collection {collection_name(model, version)} does not "
        "exist); run `couturier index` to index the catalogue with this model version"
    )
