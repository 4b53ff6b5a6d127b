"""Decode many images in worker processes: chunked, in input order, with bounded memory.

Chunks of :data:`CHUNK` images go to a pool of worker processes; at most two chunks per worker are in
flight, so memory holds a few chunks whatever the catalogue size. Small jobs (one chunk) decode
in-process.

Workers come from a ``forkserver`` that has imported only this module: they start in milliseconds,
inherit no threads or state of the caller (pyarrow's, tqdm's; a plain ``fork`` would), and do not
re-import the caller's ``__main__`` (``spawn`` does, e.g. the whole ``couturier`` CLI, once per worker).
Where there is no forkserver (Windows), they are spawned.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from tqdm import tqdm

from couturier.export.data.errors import DataError
from couturier.export.data.importers.images import MAX_PIXELS, ImageDecodeError, ImageSource, decode_image

CHUNK = 128
_IN_FLIGHT_PER_WORKER = 2

#: One decoded image, or why it could not be decoded.
Decoded = np.ndarray | ImageDecodeError


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Applies when this process first starts its fork server: without "__main__", the server imports
    # just this module (the default would import the caller's main script).
    context.set_forkserver_preload([__name__])
    return context


def default_workers() -> int:
    """Worker processes for decoding: the CPUs this process may use, at most 8."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, usable))


def _decode_chunk(
    sources: Sequence[ImageSource], size: int, max_pixels: int
) -> tuple[np.ndarray, list[tuple[int, ImageDecodeError]]]:
    images = np.full((len(sources), size, size, 3), 255, dtype=np.uint8)
    errors = []
    for k, source in enumerate(sources):
        try:
            images[k] = decode_image(source, size, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            errors.append((k, exc))
    return images, errors


def _unpack(chunk: tuple[np.ndarray, list[tuple[int, ImageDecodeError]]]) -> Iterator[Decoded]:
    images, errors = chunk
    failed = dict(errors)
    for k in range(len(images)):
        yield failed.get(k, images[k])


def decode_images(
    sources: Sequence[ImageSource],
    size: int,
    *,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    progress: bool = False,
    desc: str = "decoding images",
) -> Iterator[Decoded]:
    """Yield, for each source in order, its (size, size, 3) uint8 image or its :class:`ImageDecodeError`.

    ``workers``: processes to use (default :func:`default_workers`); 0 or 1, or a job of at most one
    chunk, decodes in this process.
    """
    n_workers = default_workers() if workers is None else workers
    bar = tqdm(total=len(sources), desc=desc, unit="img", disable=not progress)
    try:
        if n_workers <= 1 or len(sources) <= CHUNK:
            for start in range(0, len(sources), CHUNK):
                chunk = _decode_chunk(sources[start : start + CHUNK], size, max_pixels)
                bar.update(len(chunk[0]))
                yield from _unpack(chunk)
            return
        yield from _pooled(sources, size, n_workers, max_pixels, bar)
    finally:
        bar.close()


def _pooled(sources: Sequence[ImageSource], size: int, n_workers: int, max_pixels: int, bar: tqdm) -> Iterator[Decoded]:
    starts = iter(range(0, len(sources), CHUNK))
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=_context())
    pending: deque[Future[tuple[np.ndarray, list[tuple[int, ImageDecodeError]]]]] = deque()

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append(pool.submit(_decode_chunk, sources[start : start + CHUNK], size, max_pixels))

    try:
        for _ in range(n_workers * _IN_FLIGHT_PER_WORKER):
            submit()
        while pending:
            try:
                chunk = pending.popleft().result()
            except BrokenProcessPool:
                raise DataError(
                    "an image-decoding worker process died (out of memory on a huge image?); "
                    "retry with fewer workers or find the image"
                ) from None
            submit()
            bar.update(len(chunk[0]))
            yield from _unpack(chunk)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
