"""The vector store: async access to product vectors in milvus-lite (a ``.db`` path) or a Milvus server
(``http://...``), same code.

Facts this module is built on (pymilvus 3.0.2, milvus-lite 3.2.2, Milvus server 2.3.5; see DESIGN.md):

* milvus-lite holds an exclusive lock on its data directory and must see writes from one thread: see
  :mod:`couturier.services.common.vectors.lite`. Closing the last store of a file releases the file.
* Rows not yet flushed are scanned in Python on every search in milvus-lite (~0.2-0.4 s per query at
  10k unflushed rows against ~0.02 s flushed). The store flushes a lite collection lazily, before the
  first search or count that follows a write; a Milvus server needs no flush (Strong consistency).
* Calls to a milvus-lite file run on one thread per file (concurrent writes silently lost rows); calls to a
  Milvus server run on a pool of ``threads`` threads, so concurrent searches and writes overlap.
* Concurrent searches with the same collection and filter (exclusions aside, see
  POSTFILTER_EXCLUDED_MAX) are merged into one multi-vector call
  (:class:`~couturier.services.common.vectors.batching.SearchBatcher`): at 2,000 x 64-d, one call of 64
  queries cost about 5 single calls on the server and about 20 on lite (figures: docs/vector-store.md).
* The server's default consistency is Bounded (a read right after a write can miss it). Strong waits for
  the server's time tick (~200 ms per read, measured on Milvus 2.3.5), so reads ask for Session: this
  process reads its own upserts; deletes are followed by one Strong read (2.3 returns no delete
  timestamp for Session to wait on). Writes from another process show up within about a second.
* A search metric that differs from the index metric is accepted silently and ranks wrongly: searches
  always send the collection's metric, and :meth:`VectorStore.ensure` refuses a collection whose
  dimension or metric differs from the expected space.
* NaN/Inf vectors are stored by milvus-lite (the server rejects them); top-k above 16384 passes in lite
  but fails on the server; duplicate primary keys are kept twice by the server's insert: vectors are
  validated here, top-k is bounded here, and writes always use upsert.
* After a restart milvus-lite collections come back not loaded: attaching to a collection loads it.
* HNSW with metric IP can lose most of its recall on unnormalised vectors: only FLAT and IVF_FLAT are
  offered.
* Product images are not kept here (a vector database is no image store): see
  :mod:`couturier.services.common.product_images`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import numpy as np

from couturier.services.common.errors import (
    CouturierError,
    DependencyUnavailable,
    InvalidInput,
    PreconditionFailed,
)
from couturier.services.common.logs import get_logger
from couturier.services.common.vectors.batching import BatchStats, SearchBatcher
from couturier.services.common.vectors.filters import (
    MAX_LABEL_BYTES,
    MAX_PRODUCT_ID_BYTES,
    _check_ids,
    _check_text,
    _in_list,
    _quote,
    build_filter,
)
from couturier.services.common.vectors.lite import _acquire_worker, _is_lite, _lite_file_locked, _release_worker
from couturier.services.common.vectors.spaces import (
    _CATEGORY,
    _COLOUR,
    _MODEL,
    _MODEL_NAME,
    _MODEL_VERSION,
    _PK,
    _SCALARS,
    _VECTOR,
    _VERSION,
    EmbeddingSpace,
    Hit,
    ProductVector,
    _not_indexed,
    collection_name,
    not_indexed,
)

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = get_logger(__name__)

T = TypeVar("T")

# --- limits of the store (Milvus server limits, enforced on milvus-lite too) -------------------------
MAX_TOPK: Final = 16_384  # Milvus server: topk (and topk + offset) <= 16384; lite accepts more
MAX_SEARCH_QUERIES: Final = 1_024  # query vectors in one search call (server nq limit is 16384)

# --- how the store talks to Milvus -----------------------------------------------------------------
WRITE_BATCH_BYTES: Final = 8 * 1024 * 1024  # vector bytes per upsert request (server message limit is 64 MiB)
ID_BATCH: Final = 1_000  # ids per get / delete expression
SCAN_BATCH: Final = 4_096  # rows per page when scanning a collection (per_category)
LOAD_TIMEOUT_S: Final = 600.0  # loading a collection builds its index (8-19 s at 100k rows in lite)
# Read-your-writes within this process (pymilvus remembers the last write timestamp per collection);
# another process's writes show up within about a second. Strong cost ~200 ms per read on the server.
CONSISTENCY: Final = "Session"

# --- concurrency (defaults of the COUTURIER_<SERVICE>_MILVUS_* settings; figures in docs/vector-store.md) ---
SERVER_THREADS: Final = 8  # calls to a Milvus server that run at once (a milvus-lite file always has one)
SEARCH_BATCH_MAX: Final = 64  # query vectors merged into one search call (1: no merging)
SEARCH_BATCH_WAIT_S: Final = 0.0  # extra wait for a merged call to fill (0: send when a call is free)

#: Searches that exclude at most this many products (e.g. a shopper's purchases) can be merged with other
#: searches: Milvus is asked for k + |excluded| hits without the exclusion, and the excluded ones are
#: dropped here (exact: at most |excluded| of those hits can be excluded). More exclusions: a Milvus filter.
POSTFILTER_EXCLUDED_MAX: Final = 256

#: What searches are merged on: collection (space), filter expression, limit rounded up to a power of two
#: (a merged call asks for the largest limit of its searches).
_SearchKey = tuple[EmbeddingSpace, str, int]


def _limit_bucket(limit: int) -> int:
    return 1 << (limit - 1).bit_length()


class StoreSettings(Protocol):
    """The settings a VectorStore is built from (``couturier.services.common.config.VectorStoreSettings``)."""

    milvus_uri: str
    milvus_token: str
    milvus_tls_ca_file: str
    milvus_tls_cert_file: str
    milvus_tls_key_file: str
    milvus_tls_server_name: str
    milvus_threads: int
    milvus_search_batch_max: int
    milvus_search_batch_wait_ms: float


# Milvus error codes (server 2.3+ and milvus-lite agree on these).
_CODE_CONNECT_FAILED: Final = 2
_CODE_COLLECTION_NOT_FOUND: Final = 100
_CODE_COLLECTION_NOT_LOADED: Final = 101
#: Collections created before product images left Milvus have this VARCHAR field: writes fill it with "".
_LEGACY_THUMBNAIL: Final = "thumbnail"


def milvus_tls_options(ca_file: str, cert_file: str = "", key_file: str = "", server_name: str = "") -> dict[str, Any]:
    """pymilvus connection arguments for TLS to a Milvus server ({} when ``ca_file`` is ""): one-way TLS
    (``server_pem_path``: the CA that signed the server), or mTLS with a client certificate and key."""
    if not ca_file:
        if cert_file:
            raise ValueError("a Milvus client certificate (mTLS) needs the CA file too")
        return {}
    options: dict[str, Any] = {"secure": True}
    if cert_file:
        if not key_file:
            raise ValueError("a Milvus client certificate needs its key file")
        options.update(ca_pem_path=ca_file, client_pem_path=cert_file, client_key_path=key_file)
    else:
        options["server_pem_path"] = ca_file
    if server_name:
        options["server_name"] = server_name
    return options


def _as_vector(value: Any, dim: int, what: str) -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below
            vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not a numeric vector: {exc}") from None
    if vector.ndim != 1 or vector.shape[0] != dim:
        raise InvalidInput(f"{what} has shape {vector.shape}; expected ({dim},)")
    # Checked after the float32 cast: a finite float64 above 3.4e38 becomes inf here.
    if not np.isfinite(vector).all():
        raise InvalidInput(f"{what} contains NaN or infinite values; only finite numbers can be indexed")
    return vector


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class VectorStore:
    """Async access to product vectors in milvus-lite or a Milvus server (same code, chosen by ``uri``).

    Connects lazily: construction never fails on an unreachable store; the first call (or :meth:`ping`)
    raises :class:`DependencyUnavailable` saying what to do.

    ``threads``: calls to a Milvus server that run at once (milvus-lite: always one thread per file).
    ``search_batch_max`` / ``search_batch_wait_s``: concurrent searches of the same collection and filter
    are merged into calls of at most this many query vectors, waiting at most this long for a call to
    fill (0: no extra wait; ``search_batch_max=1``: no merging).
    """

    def __init__(
        self,
        uri: str,
        *,
        token: str = "",
        timeout_s: float = 10.0,
        threads: int = SERVER_THREADS,
        search_batch_max: int = SEARCH_BATCH_MAX,
        search_batch_wait_s: float = SEARCH_BATCH_WAIT_S,
        tls: Mapping[str, Any] | None = None,
    ) -> None:
        if not uri:
            raise ValueError(
                "the Milvus URI is empty; give a milvus-lite file (path ending in .db) or http://host:19530"
            )
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if not 1 <= search_batch_max <= MAX_SEARCH_QUERIES:
            raise ValueError(f"search_batch_max must be between 1 and {MAX_SEARCH_QUERIES}, got {search_batch_max}")
        if search_batch_wait_s < 0:
            raise ValueError(f"search_batch_wait_s must be >= 0, got {search_batch_wait_s}")
        self.lite = _is_lite(uri)
        if not self.lite and not uri.startswith(("http://", "https://", "tcp://", "unix:")):
            raise ValueError(
                f"Milvus URI {uri!r} is neither a milvus-lite file (a path ending in .db) nor a server URI "
                "(http://host:19530, https://..., tcp://..., unix:...)"
            )
        self.uri = os.path.abspath(uri) if self.lite else uri
        if tls and self.lite:
            raise ValueError(
                "Milvus TLS settings apply to a Milvus server, not a milvus-lite file: unset milvus_tls_* "
                "or use an https:// server URI (docs/security.md)"
            )
        self._tls = dict(tls or {})
        self.timeout_s = float(timeout_s)
        self._token = token
        self._client: MilvusClient | None = None
        self._closed = False
        self._attached: dict[EmbeddingSpace, str] = {}  # spaces checked and loaded -> their stored index type
        self._legacy: set[str] = set()  # attached collections that still have the thumbnail field
        self._lock = threading.RLock()  # the client and the attached collections (several server threads)
        self.threads = 1 if self.lite else int(threads)
        self._worker = _acquire_worker(self.uri, lite=self.lite, threads=self.threads)
        self._batcher: SearchBatcher[_SearchKey] = SearchBatcher(
            self._search_call,
            max_queries=search_batch_max,
            max_wait_s=search_batch_wait_s,
            max_in_flight=self.threads,
        )

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> VectorStore:
        """The store a service's settings describe (``COUTURIER_<SERVICE>_MILVUS_*``)."""
        return cls(
            settings.milvus_uri,
            token=settings.milvus_token,
            threads=settings.milvus_threads,
            search_batch_max=settings.milvus_search_batch_max,
            search_batch_wait_s=settings.milvus_search_batch_wait_ms / 1000.0,
            tls=milvus_tls_options(
                settings.milvus_tls_ca_file,
                settings.milvus_tls_cert_file,
                settings.milvus_tls_key_file,
                settings.milvus_tls_server_name,
            ),
        )

    @property
    def search_stats(self) -> BatchStats:
        """Searches asked for, search calls made to Milvus and query rows sent (merging at work)."""
        return self._batcher.stats

    def __repr__(self) -> str:
        return f"VectorStore({self.describe()})"

    def describe(self) -> str:
        if self.lite:
            return f"milvus-lite file {self.uri}"
        return f"Milvus server {self.uri}{' over TLS' if self._tls else ''}"

    # --- plumbing --------------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise DependencyUnavailable(f"the vector store ({self.describe()}) is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker.executor, fn, *args)

    def _connect(self) -> MilvusClient:
        """The client (worker threads only)."""
        client = self._client
        if client is not None:
            return client
        from pymilvus import MilvusClient

        with self._lock:
            if self._client is not None:
                return self._client
            if self.lite:
                os.makedirs(os.path.dirname(self.uri), exist_ok=True)
            try:
                self._client = MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout_s, **self._tls)
            except Exception as exc:
                raise self._unavailable(exc) from exc
            return self._client

    def _unavailable(self, exc: BaseException) -> DependencyUnavailable:
        if self.lite and _lite_file_locked(self.uri):
            return DependencyUnavailable(
                f"milvus-lite file {self.uri} is locked by another process; milvus-lite allows one process per "
                "file: give each service process its own file (COUTURIER_<SERVICE>_MILVUS_URI), or share a "
                "Milvus server (http://host:19530, or `milvus-lite server --host 127.0.0.1`) between them"
            )
        detail = getattr(exc, "message", "") or str(exc) or type(exc).__name__
        if self.lite:
            return DependencyUnavailable(f"cannot open milvus-lite file {self.uri}: {detail}")
        return DependencyUnavailable(f"cannot reach the Milvus server at {self.uri}: {detail}")

    def _translate(self, exc: Exception, space: EmbeddingSpace | None) -> Exception:
        """A domain error for a pymilvus / gRPC failure; anything unexpected is returned unchanged."""
        import grpc
        from pymilvus.exceptions import ConnectionConfigException, ConnectionNotExistException, MilvusException

        if isinstance(exc, CouturierError):
            return exc
        if isinstance(exc, grpc.RpcError):
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                self._drop_client()
                return self._unavailable(exc)
            rpc_error: Exception = exc
            return rpc_error
        if isinstance(exc, MilvusException):
            message = exc.message or ""
            if space is not None and exc.code == _CODE_COLLECTION_NOT_FOUND:
                self._forget(space.collection)
                return not_indexed(space)
            if space is not None and exc.code == _CODE_COLLECTION_NOT_LOADED:
                self._forget(space.collection)  # the next call loads it again
                return DependencyUnavailable(
                    f"collection {space.collection} in {self.describe()} was released by another client; "
                    "it is reloaded on the next call: retry"
                )
            if (
                isinstance(exc, (ConnectionConfigException, ConnectionNotExistException))
                or exc.code == _CODE_CONNECT_FAILED
                or "Retry timeout" in message
                or "Fail connecting" in message
                # another thread closed the shared client after a connection failure (_drop_client) while
                # this call still held it: the next call reconnects
                or "should create connection first" in message
            ):
                self._drop_client()  # reconnect on the next call
                return self._unavailable(exc)
        return exc

    def _forget(self, collection: str) -> None:
        with self._lock:
            for known in [s for s in self._attached if s.collection == collection]:
                del self._attached[known]
            self._legacy.discard(collection)

    def _drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._attached.clear()
            self._legacy.clear()
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the Milvus client failed", exc_info=True)

    async def _run(self, space: EmbeddingSpace | None, fn: Callable[..., T], *args: Any) -> T:
        def guarded() -> T:
            try:
                return fn(*args)
            except Exception as exc:
                translated = self._translate(exc, space)
                if translated is exc:
                    raise
                raise translated from exc

        return await self._call(guarded)

    # --- collections -----------------------------------------------------------------------------------

    def _attach(self, space: EmbeddingSpace, *, create: bool) -> MilvusClient:
        """Make sure the collection exists (created when ``create``), fits ``space`` and is loaded."""
        client = self._connect()
        if space in self._attached:
            return client
        with self._lock:  # one thread attaches; the others wait for it instead of loading twice
            return self._attach_locked(client, space, create=create)

    def _attach_locked(self, client: MilvusClient, space: EmbeddingSpace, *, create: bool) -> MilvusClient:
        if space in self._attached:
            return client
        name = space.collection
        if client.has_collection(name, timeout=self.timeout_s):
            index_type = self._verify(client, space)
        elif not create:
            raise not_indexed(space)
        else:
            index_type = self._create(client, space)
        client.load_collection(name, timeout=LOAD_TIMEOUT_S)
        self._attached[space] = index_type
        return client

    def _create(self, client: MilvusClient, space: EmbeddingSpace) -> str:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_PK, DataType.VARCHAR, is_primary=True, max_length=MAX_PRODUCT_ID_BYTES)
        schema.add_field(_VECTOR, DataType.FLOAT_VECTOR, dim=space.dim)
        for name in _SCALARS:
            schema.add_field(name, DataType.VARCHAR, max_length=MAX_LABEL_BYTES)
        index_params = client.prepare_index_params()
        params = {"nlist": space.nlist} if space.index == "IVF_FLAT" else {}
        index_params.add_index(_VECTOR, index_type=space.index, metric_type=space.metric, params=params)
        try:
            client.create_collection(
                space.collection,
                schema=schema,
                index_params=index_params,
                consistency_level=CONSISTENCY,
                timeout=self.timeout_s,
            )
        except Exception:
            # Another process may have created it in between (a shared server): accept it if it fits.
            if not client.has_collection(space.collection, timeout=self.timeout_s):
                raise
            return self._verify(client, space)
        self._legacy.discard(space.collection)
        log.info(
            "vector collection created",
            collection=space.collection,
            dim=space.dim,
            metric=space.metric,
            index=space.index,
            store=self.describe(),
        )
        return space.index

    def _verify(self, client: MilvusClient, space: EmbeddingSpace) -> str:
        """Refuse a collection whose schema or metric does not fit ``space``; returns its index type."""
        name = space.collection
        fix = f"drop it (re-index with `couturier index`) or use a new model version for {space.model}"
        description = client.describe_collection(name, timeout=self.timeout_s)
        fields = {f["name"]: f for f in description.get("fields", [])}
        missing = [n for n in (_PK, _VECTOR, *_SCALARS) if n not in fields]
        if missing or not fields[_PK].get("is_primary"):
            raise PreconditionFailed(
                f"collection {name} in {self.describe()} was not created by couturier "
                f"(missing fields: {', '.join(missing) or 'primary key ' + _PK}); {fix}"
            )
        if _LEGACY_THUMBNAIL in fields:
            self._legacy.add(name)
        else:
            self._legacy.discard(name)
        dim = int(fields[_VECTOR].get("params", {}).get("dim", 0))
        if dim != space.dim:
            raise PreconditionFailed(
                f"collection {name} holds {dim}-d vectors but {space.describe()} produces {space.dim}-d vectors; {fix}"
            )
        indexes = client.list_indexes(name, field_name=_VECTOR)
        if not indexes:
            raise PreconditionFailed(f"collection {name} has no vector index; {fix}")
        index = client.describe_index(name, indexes[0], timeout=self.timeout_s)
        metric = str(index.get("metric_type", "")).upper()
        if metric != space.metric:
            raise PreconditionFailed(
                f"collection {name} is indexed for metric {metric} but {space.describe()} is searched with "
                f"{space.metric}; {fix}"
            )
        index_type = str(index.get("index_type", ""))
        if index_type != space.index:
            log.warning(
                "vector index type differs from the configured one; searching the stored index",
                collection=name,
                stored=index_type,
                configured=space.index,
            )
        return index_type

    async def ensure(self, space: EmbeddingSpace) -> None:
        """Create the collection of ``space`` if missing, check that an existing one fits, and load it."""
        await self._run(space, lambda: self._attach(space, create=True))

    async def versions(self, model: str) -> list[str]:
        """The versions of ``model`` that have a collection in this store (sorted, numbers numerically)."""
        if not _MODEL_NAME.fullmatch(model):
            raise InvalidInput(f"model name {model!r} must be letters, digits and '_'")

        def work() -> list[str]:
            names = self._connect().list_collections(timeout=self.timeout_s)
            prefix = f"{model}_v"
            found = [n[len(prefix) :] for n in names if n.startswith(prefix) and _VERSION.fullmatch(n[len(prefix) :])]
            return sorted(found, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))

        return await self._run(None, work)

    async def dim(self, model: str, version: str) -> int:
        """The vector dimension stored for ``model`` ``version`` (for tools that know no model to ask)."""
        if not _MODEL_NAME.fullmatch(model) or not _VERSION.fullmatch(version):
            raise InvalidInput(f"no collection can exist for model {model!r} version {version!r}")
        name = collection_name(model, version)

        def work() -> int:
            client = self._connect()
            if not client.has_collection(name, timeout=self.timeout_s):
                raise _not_indexed(model, version)
            fields = client.describe_collection(name, timeout=self.timeout_s).get("fields", [])
            for entry in fields:
                if entry.get("name") == _VECTOR:
                    return int(entry.get("params", {}).get("dim", 0))
            raise PreconditionFailed(
                f"collection {name} in {self.describe()} has no field {_VECTOR!r}; it was not "
                "created by couturier: drop it and re-index with `couturier index`"
            )

        return await self._run(None, work)

    async def drop(self, space: EmbeddingSpace) -> None:
        """Drop the collection of ``space`` (no error when it does not exist)."""

        def work() -> None:
            client = self._connect()
            self._forget(space.collection)
            self._worker.dirty.discard(space.collection)
            if client.has_collection(space.collection, timeout=self.timeout_s):
                client.drop_collection(space.collection, timeout=self.timeout_s)
                log.info("vector collection dropped", collection=space.collection, store=self.describe())

        await self._run(space, work)

    # --- writes ----------------------------------------------------------------------------------------

    def _rows(self, space: EmbeddingSpace, items: Sequence[ProductVector]) -> list[dict[str, Any]]:
        if isinstance(items, ProductVector):
            items = [items]
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for index, item in enumerate(items):
            if not isinstance(item, ProductVector):
                raise InvalidInput(f"item {index} is a {type(item).__name__}, not a ProductVector")
            product_id = _check_text(item.product_id, f"item {index} product id", MAX_PRODUCT_ID_BYTES, required=True)
            if product_id in seen:
                raise InvalidInput(
                    f"product {product_id!r} appears more than once in one upsert; send each product once"
                )
            seen.add(product_id)
            of = f"of product {product_id!r}"
            rows.append(
                {
                    _PK: product_id,
                    _VECTOR: _as_vector(item.vector, space.dim, f"vector {of}"),
                    _CATEGORY: _check_text(item.category, f"category {of}", MAX_LABEL_BYTES, required=False),
                    _COLOUR: _check_text(item.colour, f"colour {of}", MAX_LABEL_BYTES, required=False),
                    _MODEL: space.model,
                    _MODEL_VERSION: space.version,
                }
            )
        return rows

    async def upsert(self, space: EmbeddingSpace, items: Sequence[ProductVector]) -> int:
        """Insert or replace products' vectors (idempotent); returns how many were written.

        Everything is validated before anything is written: a bad item (NaN/Inf, wrong dimension, empty
        or duplicate id, oversized label) rejects the whole call and leaves the store unchanged. A call
        larger than one request is written in several requests, each idempotent.
        """
        rows = self._rows(space, items)
        if not rows:
            return 0
        batch = max(1, WRITE_BATCH_BYTES // (4 * space.dim))

        def work() -> int:
            client = self._attach(space, create=True)
            legacy = space.collection in self._legacy
            for chunk in _chunks(rows, batch):
                payload = [{**row, _LEGACY_THUMBNAIL: ""} for row in chunk] if legacy else list(chunk)
                client.upsert(space.collection, payload, timeout=self.timeout_s)
                if self.lite:
                    self._worker.dirty.add(space.collection)
            return len(rows)

        return await self._run(space, work)

    async def delete(self, space: EmbeddingSpace, ids: Sequence[str]) -> tuple[int, list[str]]:
        """Delete products by id; returns (how many were deleted, the ids that were not stored)."""
        wanted = _check_ids(ids)
        if not wanted:
            return 0, []

        def work() -> tuple[int, list[str]]:
            client = self._attach(space, create=False)
            deleted = 0
            not_found: list[str] = []
            for chunk in _chunks(wanted, ID_BATCH):
                rows = client.query(
                    space.collection,
                    filter=_in_list(_PK, chunk),
                    output_fields=[_PK],
                    consistency_level=CONSISTENCY,
                    timeout=self.timeout_s,
                )
                present = {row[_PK] for row in rows}
                not_found.extend(i for i in chunk if i not in present)
                if present:
                    client.delete(
                        space.collection,
                        filter=_in_list(_PK, [i for i in chunk if i in present]),
                        timeout=self.timeout_s,
                    )
                    deleted += len(present)
                    if self.lite:
                        self._worker.dirty.add(space.collection)
            if deleted and not self.lite:
                # Session consistency covers our upserts but not deletes (Milvus 2.3 returns no delete
                # timestamp): one Strong read waits until the server has applied them, so the reads
                # that follow do not see the deleted rows.
                client.query(
                    space.collection,
                    filter=_in_list(_PK, list(wanted[:1])),
                    output_fields=["count(*)"],
                    consistency_level="Strong",
                    timeout=self.timeout_s,
                )
            return deleted, not_found

        return await self._run(space, work)

    # --- reads -----------------------------------------------------------------------------------------

    def _flush_if_dirty(self, client: MilvusClient, space: EmbeddingSpace) -> None:
        """milvus-lite scans unflushed rows in Python on every search: flush once after writes."""
        if self.lite and space.collection in self._worker.dirty:
            client.flush(space.collection, timeout=LOAD_TIMEOUT_S)
            self._worker.dirty.discard(space.collection)

    async def get(self, space: EmbeddingSpace, ids: Sequence[str]) -> dict[str, ProductVector]:
        """Stored vectors by product id; ids that are not stored are absent from the answer."""
        wanted = _check_ids(ids)
        if not wanted:
            return {}

        def work() -> dict[str, ProductVector]:
            client = self._attach(space, create=False)
            found: dict[str, ProductVector] = {}
            for chunk in _chunks(wanted, ID_BATCH):
                rows = client.query(
                    space.collection,
                    filter=_in_list(_PK, chunk),
                    output_fields=[_PK, _VECTOR, _CATEGORY, _COLOUR],
                    consistency_level=CONSISTENCY,
                    timeout=self.timeout_s,
                )
                for row in rows:
                    found[row[_PK]] = ProductVector(
                        product_id=row[_PK],
                        vector=np.asarray(row[_VECTOR], dtype=np.float32),
                        category=row.get(_CATEGORY) or "",
                        colour=row.get(_COLOUR) or "",
                    )
            return {i: found[i] for i in wanted if i in found}

        return await self._run(space, work)

    async def search(
        self,
        space: EmbeddingSpace,
        queries: np.ndarray,
        k: int,
        *,
        categories: Sequence[str] = (),
        colours: Sequence[str] = (),
        exclude_ids: Sequence[str] = (),
    ) -> list[list[Hit]]:
        """The ``k`` most similar products for each query vector (rows of ``queries``), best first.

        ``categories`` / ``colours`` keep products whose category / colour is one of the values (empty:
        no filter); ``exclude_ids`` removes products (e.g. those the user already bought). Fewer than
        ``k`` hits come back when fewer products match.
        """
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                matrix = np.asarray(queries, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"query vectors are not numeric: {exc}") from None
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] != space.dim:
            raise InvalidInput(f"query vectors have shape {matrix.shape}; expected (Q, {space.dim})")
        if not 1 <= matrix.shape[0] <= MAX_SEARCH_QUERIES:
            raise InvalidInput(f"a search takes 1 to {MAX_SEARCH_QUERIES} query vectors, got {matrix.shape[0]}")
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        if bad.size:
            raise InvalidInput(f"query vector {int(bad[0])} contains NaN or infinite values")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_TOPK:
            raise InvalidInput(f"k must be an integer between 1 and {MAX_TOPK}, got {k!r}")
        k = int(k)
        expr = build_filter(categories, colours, exclude_ids)  # validates every value
        if self._batcher.enabled and exclude_ids and len(exclude_ids) <= POSTFILTER_EXCLUDED_MAX:
            excluded = set(_check_ids(exclude_ids, "excluded product id"))
            if k + len(excluded) <= MAX_TOPK:  # exclusions dropped here, so searches of other shoppers merge
                limit = k + len(excluded)
                shared = build_filter(categories, colours)
                hits = await self._batcher.search((space, shared, _limit_bucket(limit)), matrix, limit)
                return [[hit for hit in row if hit.product_id not in excluded][:k] for row in hits]
        hits = await self._batcher.search((space, expr, _limit_bucket(k)), matrix, k)
        return [row[:k] for row in hits]

    async def _search_call(self, key: _SearchKey, matrix: np.ndarray, limit: int) -> list[list[Hit]]:
        """One search call to Milvus (the queries of one or several merged searches)."""
        space, expr, _ = key

        def work() -> list[list[Hit]]:
            client = self._attach(space, create=False)
            self._flush_if_dirty(client, space)
            index_type = self._attached.get(space, space.index)
            params: dict[str, Any] = {"nprobe": space.nprobe} if index_type == "IVF_FLAT" else {}
            results = client.search(
                space.collection,
                data=list(matrix),
                filter=expr,
                limit=limit,
                output_fields=[_CATEGORY, _COLOUR],
                search_params={"metric_type": space.metric, "params": params},
                anns_field=_VECTOR,
                consistency_level=CONSISTENCY,
                timeout=self.timeout_s,
            )
            sign = -1.0 if space.metric == "L2" else 1.0
            return [
                [
                    Hit(
                        product_id=str(hit.id),
                        score=sign * float(hit.distance),
                        category=(hit.get("entity") or {}).get(_CATEGORY) or "",
                        colour=(hit.get("entity") or {}).get(_COLOUR) or "",
                    )
                    for hit in hits
                ]
                for hits in results
            ]

        return await self._run(space, work)

    async def count(self, space: EmbeddingSpace) -> int:
        """How many products have a vector in ``space`` (0 when nothing is indexed yet)."""

        def work() -> int:
            client = self._connect()
            if space not in self._attached and not client.has_collection(space.collection, timeout=self.timeout_s):
                return 0
            client = self._attach(space, create=False)
            self._flush_if_dirty(client, space)
            rows = client.query(
                space.collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level=CONSISTENCY,
                timeout=self.timeout_s,
            )
            return int(rows[0]["count(*)"]) if rows else 0

        return await self._run(space, work)

    async def per_category(self, space: EmbeddingSpace) -> dict[str, int]:
        """Products per category (``""`` for products stored without one); empty when nothing is indexed."""

        def work() -> dict[str, int]:
            client = self._connect()
            if space not in self._attached and not client.has_collection(space.collection, timeout=self.timeout_s):
                return {}
            client = self._attach(space, create=False)
            self._flush_if_dirty(client, space)
            counts: dict[str, int] = {}
            # Pages in primary-key order ("iterator" mode sorts by pk on the server and in milvus-lite);
            # pymilvus's query_iterator asks for a server timestamp milvus-lite does not serve.
            cursor_filter = f'{_PK} != ""'
            while True:
                page = client.query(
                    space.collection,
                    filter=cursor_filter,
                    output_fields=[_PK, _CATEGORY],
                    limit=SCAN_BATCH,
                    iterator="True",
                    reduce_stop_for_best="True",
                    consistency_level=CONSISTENCY,
                    timeout=self.timeout_s,
                )
                for row in page:
                    category = row.get(_CATEGORY) or ""
                    counts[category] = counts.get(category, 0) + 1
                if len(page) < SCAN_BATCH:
                    break
                cursor_filter = f"{_PK} > {_quote(max(row[_PK] for row in page))}"
            return dict(sorted(counts.items()))

        return await self._run(space, work)

    async def list_ids(self, space: EmbeddingSpace, *, after: str = "", limit: int = SCAN_BATCH) -> list[str]:
        """One page of the stored product ids: up to ``limit`` ids greater than ``after``, ascending (the
        next page starts after the last id of this one). Empty when nothing is indexed in ``space``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_TOPK:
            raise InvalidInput(f"limit must be an integer between 1 and {MAX_TOPK}, got {limit!r}")
        if after:
            _check_text(after, "page cursor (a product id)", MAX_PRODUCT_ID_BYTES, required=True)

        def work() -> list[str]:
            client = self._connect()
            if space not in self._attached and not client.has_collection(space.collection, timeout=self.timeout_s):
                return []
            client = self._attach(space, create=False)
            self._flush_if_dirty(client, space)
            if not self.lite:
                # Server 2.3.5 reads "iterator" queries at its current time tick, ignoring the consistency
                # level (this process's writes of the last ~0.3 s were missing); a plain read waits for them.
                client.query(
                    space.collection,
                    filter=f'{_PK} == ""',
                    output_fields=[_PK],
                    limit=1,
                    consistency_level=CONSISTENCY,
                    timeout=self.timeout_s,
                )
            page = client.query(  # "iterator" mode: the smallest primary keys matching, as in per_category
                space.collection,
                filter=f"{_PK} > {_quote(after)}" if after else f'{_PK} != ""',
                output_fields=[_PK],
                limit=limit,
                iterator="True",
                reduce_stop_for_best="True",
                consistency_level=CONSISTENCY,
                timeout=self.timeout_s,
            )
            return sorted(str(row[_PK]) for row in page)

        return await self._run(space, work)

    # --- health and lifecycle -------------------------------------------------------------------------

    async def ping(self) -> str:
        """A short readiness detail (usable as a DependencyCheck probe); raises DependencyUnavailable
        when the store cannot be reached."""

        def work() -> str:
            names = self._connect().list_collections(timeout=self.timeout_s)
            return f"{self.describe()}: {len(names)} collection{'s' if len(names) != 1 else ''}"

        return await self._run(None, work)

    async def close(self) -> None:
        """Close the connection; the last store of a milvus-lite file in this process releases the file
        (another process can open it afterwards). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._worker.executor, self._drop_client)
        await _release_worker(self.uri, self._worker, lite=self.lite)
