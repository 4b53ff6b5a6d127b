"""Product images (the PNG kept for each indexed product) outside the vector database.

Milvus keeps vectors and filter fields; a vector database is no image store. The retrieval service keeps
each indexed product's image in a :class:`ProductImageStore`, keyed by product id: one image per product,
the latest indexing wins (whatever the encoder version).

:class:`FileImageStore` is the embedded default: one file per product under a root directory. Product ids
are untrusted, so a file's name is the SHA-256 (hex) of the id's UTF-8 bytes, fanned out as
``ab/cd/<sha256>.png``: no id reaches outside the root, however it is spelled. A write goes to a
temporary file in the target's folder, is fsynced, and is renamed over the target (``os.replace``), so a
reader sees the old image or the new one, never part of one. Reads stop at ``max_bytes``.

Several replicas: production (``k8s/base/retrieval.yaml``, ``docker/compose.yaml``) mounts one shared
volume at ``product_images_dir`` (a ReadWriteMany PVC on Kubernetes), so the image written by the pod
that indexed a product is read by every pod. The next step is an object-storage implementation of the
same Protocol (S3, GCS or Azure Blob; keys derived from the id the same way), which removes that volume;
nothing outside this module depends on files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Protocol, TypeVar, runtime_checkable

from couturier.services.common.errors import DependencyUnavailable, InvalidInput, PreconditionFailed
from couturier.services.common.vectors import MAX_PRODUCT_ID_BYTES

T = TypeVar("T")

#: Largest image kept per product: 256 of them (GetProducts' most) stay under the 16 MiB gRPC message limit.
MAX_PRODUCT_IMAGE_BYTES: Final = 48 * 1024
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


@runtime_checkable
class ProductImageStore(Protocol):
    """Product id -> PNG bytes. Ids are checked (non-empty strings of at most 512 UTF-8 bytes)."""

    async def put_many(self, images: Mapping[str, bytes]) -> int:
        """Store or replace images by product id; everything is checked before anything is written.
        Returns how many were written."""
        ...

    async def get_many(self, product_ids: Sequence[str]) -> dict[str, bytes]:
        """Images by product id in request order (duplicates once); ids without an image are absent."""
        ...

    async def delete_many(self, product_ids: Sequence[str]) -> int:
        """Delete images by product id (unknown ids are ignored); returns how many existed."""
        ...

    async def ping(self) -> str:
        """A short readiness detail (a health probe); raises DependencyUnavailable when unusable."""
        ...

    def describe(self) -> str:
        """Where the images live, for messages and diagnostics."""
        ...

    async def close(self) -> None:
        """Release threads and connections. Idempotent."""
        ...


def checked_ids(product_ids: Iterable[str]) -> list[str]:
    """Valid product ids in first-seen order, duplicates removed; InvalidInput otherwise."""
    if isinstance(product_ids, (str, bytes)):
        raise InvalidInput("product ids must be a list of strings, got one string")
    seen: dict[str, None] = {}
    for product_id in product_ids:
        if not isinstance(product_id, str) or not product_id:
            raise InvalidInput(f"product id must be a non-empty string, got {product_id!r}")
        try:
            size = len(product_id.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput(f"product id {product_id!r} is not valid Unicode text") from None
        if size > MAX_PRODUCT_ID_BYTES:
            raise InvalidInput(f"product id is {size} bytes in UTF-8; at most {MAX_PRODUCT_ID_BYTES}")
        seen.setdefault(product_id, None)
    return list(seen)


def checked_images(images: Mapping[str, bytes], max_bytes: int = MAX_PRODUCT_IMAGE_BYTES) -> dict[str, bytes]:
    """``images`` after checking every id and image (non-empty PNG of at most ``max_bytes``)."""
    if not isinstance(images, Mapping):
        raise InvalidInput(f"images must map product ids to PNG bytes, got {type(images).__name__}")
    checked_ids(images)
    for product_id, data in images.items():
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"image of product {product_id!r} must be bytes, got {type(data).__name__}")
        if not 0 < len(data) <= max_bytes:
            raise InvalidInput(f"image of product {product_id!r} is {len(data)} bytes; 1 to {max_bytes} are kept")
        if bytes(data[: len(PNG_SIGNATURE)]) != PNG_SIGNATURE:
            raise InvalidInput(f"image of product {product_id!r} is not a PNG")
    return {product_id: bytes(data) for product_id, data in images.items()}


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := os.read(fd, limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class FileImageStore:
    """Images as files under ``root_dir`` (created on first use): ``<root>/ab/cd/<sha256 of the id>.png``."""

    def __init__(
        self, root_dir: str | os.PathLike[str], *, max_bytes: int = MAX_PRODUCT_IMAGE_BYTES, workers: int = 4
    ) -> None:
        if not str(root_dir):
            raise ValueError("the product images directory is empty; give a folder (e.g. var/product_images)")
        if max_bytes < 1 or workers < 1:
            raise ValueError(f"max_bytes and workers must be positive, got {max_bytes} and {workers}")
        self.root = Path(os.path.abspath(root_dir))
        self.max_bytes = int(max_bytes)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="product-images")
        self._closed = False

    def __repr__(self) -> str:
        return f"FileImageStore({self.root})"

    def describe(self) -> str:
        return f"product image files under {self.root}"

    def path_for(self, product_id: str) -> Path:
        """The file of ``product_id``'s image (whether or not it exists); always inside the root."""
        (product_id,) = checked_ids([product_id])
        digest = hashlib.sha256(product_id.encode("utf-8")).hexdigest()
        return self.root / digest[:2] / digest[2:4] / f"{digest}.png"

    # --- plumbing --------------------------------------------------------------------------------------

    async def _map(self, fn: Callable[[str], T], product_ids: Sequence[str]) -> list[T]:
        """``fn`` over the ids on the worker threads."""
        if self._closed:
            raise DependencyUnavailable(f"the product image store ({self.describe()}) is closed")
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(self._executor, fn, i) for i in product_ids)))

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise DependencyUnavailable(f"the product image store ({self.describe()}) is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _unavailable(self, action: str, product_id: str, exc: OSError) -> DependencyUnavailable:
        reason = exc.strerror or type(exc).__name__
        return DependencyUnavailable(
            f"cannot {action} the image of product {product_id!r} in {self.describe()}: {reason}; check that "
            "the folder is mounted, writable by this service and not full (product_images_dir)"
        )

    # --- the store ------------------------------------------------------------------------------------

    async def put_many(self, images: Mapping[str, bytes]) -> int:
        checked = checked_images(images, self.max_bytes)

        def write(product_id: str) -> None:
            path = self.path_for(product_id)
            temp = ""
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
                with os.fdopen(fd, "wb") as file:
                    file.write(checked[product_id])
                    file.flush()
                    os.fsync(file.fileno())
                os.chmod(temp, 0o644)
                os.replace(temp, path)
            except OSError as exc:
                if temp:
                    with contextlib.suppress(OSError):
                        os.unlink(temp)
                raise self._unavailable("write", product_id, exc) from exc

        await self._map(write, list(checked))
        return len(checked)

    async def get_many(self, product_ids: Sequence[str]) -> dict[str, bytes]:
        wanted = checked_ids(product_ids)

        def read(product_id: str) -> bytes | None:
            path = self.path_for(product_id)
            try:
                # no symlinks followed; O_NONBLOCK: a FIFO planted there cannot block the thread
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._corrupt(product_id, path, "is a symbolic link") from None
                raise self._unavailable("read", product_id, exc) from exc
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
                data = _read_at_most(fd, self.max_bytes + 1) if regular else b""
            except OSError as exc:
                raise self._unavailable("read", product_id, exc) from exc
            finally:
                os.close(fd)
            if not regular:
                raise self._corrupt(product_id, path, "is not a regular file")
            if len(data) > self.max_bytes:
                raise self._corrupt(product_id, path, f"is larger than {self.max_bytes} bytes")
            if not data.startswith(PNG_SIGNATURE):
                raise self._corrupt(product_id, path, "is not a PNG")
            return data

        found = await self._map(read, wanted)
        return {i: data for i, data in zip(wanted, found, strict=True) if data is not None}

    def _corrupt(self, product_id: str, path: Path, problem: str) -> PreconditionFailed:
        return PreconditionFailed(
            f"the stored image of product {product_id!r} ({path}) {problem}; it was not written by this "
            "store: re-index the product (`couturier index`) to replace it"
        )

    async def delete_many(self, product_ids: Sequence[str]) -> int:
        wanted = checked_ids(product_ids)

        def delete(product_id: str) -> bool:
            try:
                os.unlink(self.path_for(product_id))
            except (FileNotFoundError, NotADirectoryError):
                return False
            except OSError as exc:
                raise self._unavailable("delete", product_id, exc) from exc
            return True

        return sum(await self._map(delete, wanted))

    async def ping(self) -> str:
        def check() -> str:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DependencyUnavailable(
                    f"cannot create the product images folder {self.root}: {exc.strerror or exc}"
                ) from exc
            if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
                raise DependencyUnavailable(
                    f"the product images folder {self.root} is not readable and writable by this service "
                    "(a read-only mount, or another owner); fix the volume or product_images_dir"
                )
            return self.describe()

        return await self._call(check)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=False)
