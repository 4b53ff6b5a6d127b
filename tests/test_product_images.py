"""The product image store: FileImageStore on tmp_path (safe names, atomic writes, bounded reads), and the
retrieval catalogue keeping each product's image there rather than in Milvus."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from couturier.services.common.errors import DependencyUnavailable, InvalidInput, PreconditionFailed
from couturier.services.common.images import encode_png
from couturier.services.common.product_images import (
    MAX_PRODUCT_IMAGE_BYTES,
    FileImageStore,
    ProductImageStore,
)
from couturier.v1 import catalogue_pb2, common_pb2, retrieval_pb2
from support.fakes import FakeInferenceBackend


def png(seed: int, size: int = 8) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8))


@pytest.fixture
async def images(tmp_path: Path) -> AsyncIterator[FileImageStore]:
    store = FileImageStore(tmp_path / "images")
    yield store
    await store.close()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_round_trip_in_request_order_and_missing_ids_absent(images: FileImageStore) -> None:
    assert isinstance(images, ProductImageStore)
    assert not images.root.exists()  # nothing touches the disk before the first use
    stored = {"p1": png(1), "p2": png(2), "p3": png(3)}
    assert await images.put_many(stored) == 3
    got = await images.get_many(["p3", "missing", "p1", "p3"])
    assert list(got) == ["p3", "p1"] and got == {"p3": stored["p3"], "p1": stored["p1"]}
    assert await images.get_many([]) == {} and await images.put_many({}) == 0
    digest = hashlib.sha256(b"p2").hexdigest()
    assert images.path_for("p2") == images.root / digest[:2] / digest[2:4] / f"{digest}.png"
    assert images.path_for("p2").read_bytes() == stored["p2"]
    assert len(files_under(images.root)) == 3
    assert "p1" not in images.describe() and str(images.root) in await images.ping()


async def test_hostile_ids_stay_inside_the_root(images: FileImageStore, tmp_path: Path) -> None:
    hostile = [
        "../../etc/passwd",
        "../outside.png",
        "/etc/passwd",
        "..",
        ".",
        "a/../../b",
        "C:\\Windows\\x",
        "nul\x00byte",
        "~root",
        "é/ü",
        "x" * 512,
        " ",
        "*",
        "$(rm -rf /)",
    ]
    await images.put_many({pid: png(i) for i, pid in enumerate(hostile)})
    root = images.root.resolve()
    for pid in hostile:
        path = images.path_for(pid).resolve()
        assert path.is_relative_to(root) and len(path.relative_to(root).parts) == 3, pid
    assert files_under(tmp_path) == files_under(images.root)  # nothing was written outside the root
    assert len(files_under(images.root)) == len(hostile)
    assert not (tmp_path / "outside.png").exists() and not (tmp_path.parent / "outside.png").exists()
    got = await images.get_many(hostile)
    assert got == {pid: png(i) for i, pid in enumerate(hostile)}
    assert await images.delete_many(hostile) == len(hostile)
    assert files_under(images.root) == []


async def test_bad_ids_and_images_are_refused_before_anything_is_written(images: FileImageStore) -> None:
    good = png(0)
    for bad, needle in [
        ({"": good}, "non-empty"),
        ({"x" * 513: good}, "at most 512"),
        ({"\ud800": good}, "not valid Unicode"),
        ({"p": b""}, "1 to"),
        ({"p": b"GIF89a...."}, "not a PNG"),
        ({"p": good + b"\0" * MAX_PRODUCT_IMAGE_BYTES}, "1 to"),
        ({"p": "text"}, "must be bytes"),
    ]:
        with pytest.raises(InvalidInput, match=needle):
            await images.put_many({"ok": good, **bad})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="one string"):
        await images.get_many("p1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await images.delete_many([""])
    assert not images.root.exists() or files_under(images.root) == []


async def test_overwrite_is_atomic(images: FileImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = png(1, size=32), png(2, size=32)
    await images.put_many({"p": old})

    async def reader() -> set[bytes]:
        seen = set()
        for _ in range(200):
            seen.add((await images.get_many(["p"]))["p"])  # never missing, never partial
            await asyncio.sleep(0)
        return seen

    async def writer() -> None:
        for i in range(100):
            await images.put_many({"p": (old, new)[i % 2]})

    seen, _ = await asyncio.gather(reader(), writer())
    assert seen <= {old, new}
    assert (await images.get_many(["p"]))["p"] == new
    assert [p.name for p in images.path_for("p").parent.iterdir()] == [images.path_for("p").name]  # no temp files

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DependencyUnavailable, match="No space left on device"):
        await images.put_many({"p": old})
    assert (await images.get_many(["p"]))["p"] == new  # the previous image is intact
    assert [p.name for p in images.path_for("p").parent.iterdir()] == [images.path_for("p").name]


async def test_delete_counts_existing_images_only(images: FileImageStore) -> None:
    await images.put_many({"a": png(1), "b": png(2)})
    assert await images.delete_many(["a", "never-stored", "a"]) == 1
    assert await images.get_many(["a", "b"]) == {"b": png(2)}
    assert await images.delete_many(["a"]) == 0


async def test_reads_are_bounded_and_foreign_files_refused(tmp_path: Path) -> None:
    images = FileImageStore(tmp_path / "images", max_bytes=1024)
    try:
        for pid, write in [
            ("big", lambda p: p.write_bytes(png(0, size=4)[:8] + b"\0" * 2048)),
            ("gif", lambda p: p.write_bytes(b"GIF89a")),
            ("empty", lambda p: p.write_bytes(b"")),
            ("link", lambda p: p.symlink_to(tmp_path / "elsewhere.png")),
            ("dir", lambda p: p.mkdir()),
        ]:
            path = images.path_for(pid)
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
            with pytest.raises(PreconditionFailed, match=f"product '{pid}'.*re-index"):
                await images.get_many([pid])
    finally:
        await images.close()


async def test_ping_and_closed_store(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    images = FileImageStore(blocked / "images")
    with pytest.raises(DependencyUnavailable, match="cannot create the product images folder"):
        await images.ping()
    with pytest.raises(DependencyUnavailable, match="cannot write the image of product 'p'"):
        await images.put_many({"p": png(0)})
    await images.close()
    await images.close()  # idempotent
    with pytest.raises(DependencyUnavailable, match="closed"):
        await images.get_many(["p"])
    with pytest.raises(ValueError):
        FileImageStore("")


# -- the retrieval catalogue keeps images in the image store ---------------------------------------------


async def _requests(products: list[tuple[str, bytes]]) -> AsyncIterator[catalogue_pb2.IndexProductsRequest]:
    yield catalogue_pb2.IndexProductsRequest(
        products=[
            catalogue_pb2.ProductToIndex(
                product=common_pb2.Product(product_id=pid, category="tops"), image=common_pb2.ImagePayload(data=data)
            )
            for pid, data in products
        ]
    )


async def test_retrieval_keeps_images_in_the_image_store_not_in_milvus(
    tmp_path: Path, fake_backend: FakeInferenceBackend
) -> None:
    pytest.importorskip("milvus_lite")
    from couturier.services.common.catalogue_index import CatalogueIndex
    from couturier.services.common.encoders import ImageEncoder
    from couturier.services.common.models import RETRIEVAL_ENCODER
    from couturier.services.common.vectors import VectorStore
    from couturier.services.retrieval.service import Retrieval, RetrievalServicer

    store = VectorStore(str(tmp_path / "milvus" / "retrieval.db"))
    images = FileImageStore(tmp_path / "images")
    catalogue = CatalogueIndex(ImageEncoder(fake_backend, RETRIEVAL_ENCODER), store, metric="IP", images=images)
    servicer = RetrievalServicer(Retrieval(fake_backend, catalogue, text=None))  # type: ignore[arg-type]
    try:
        space = await catalogue.space_of("1")  # the dimension comes from the model's metadata, not an inference
        assert space.dim == fake_backend.dims.retrieval_dim and fake_backend.calls[RETRIEVAL_ENCODER] == 0

        uploads = [(f"p{i}", png(i, size=20)) for i in range(3)]
        indexed = await catalogue.index_stream(_requests(uploads))
        assert (indexed.upserted, indexed.total) == (3, 3)
        kept = await images.get_many(["p0", "p1", "p2"])
        size = fake_backend.dims.image_size
        assert all(Image.open(io.BytesIO(data)).size == (size, size) for data in kept.values())  # model resolution

        def fields() -> set[str]:
            description = store._connect().describe_collection(space.collection)
            return {f["name"] for f in description["fields"]}

        assert "thumbnail" not in await store._run(None, fields)

        got = await servicer.GetProducts(retrieval_pb2.GetProductsRequest(product_ids=["p2", "nope", "p0"]), None)
        assert [p.product.product_id for p in got.products] == ["p2", "p0"] and list(got.not_found) == ["nope"]
        assert [p.image.data for p in got.products] == [kept["p2"], kept["p0"]]
        assert all(p.image.mime_type == "image/png" for p in got.products)

        images.path_for("p0").unlink()  # e.g. a replica that does not share the folder
        with pytest.raises(PreconditionFailed, match=r"no stored image.*'p0'.*couturier index"):
            await servicer.GetProducts(retrieval_pb2.GetProductsRequest(product_ids=["p0"]), None)

        deleted = await catalogue.delete(catalogue_pb2.DeleteProductsRequest(product_ids=["p1", "p2", "nope"]))
        assert deleted.deleted == 2 and list(deleted.not_found) == ["nope"]
        assert await images.get_many(["p1", "p2"]) == {}
    finally:
        await store.close()
        await images.close()
