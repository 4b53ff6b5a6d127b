"""Minibatches streamed from the image store: only the rows a step needs become floats.

A catalogue's ``images`` is a (N, S, S, 3) uint8 array, normally a read-only ``np.memmap`` of the
dataset folder's ``images_<S>.u8``. Training never turns the whole of it into a tensor: each step
gathers its rows (``images[index]`` copies just those rows out of the page cache), and converts that
uint8 batch to float32 in [-1, 1], channels first (:func:`to_model_input`) -- on the GPU when
training there, so only uint8 crosses the bus. Peak memory is then one batch (plus the page cache
of the file, which the kernel evicts as needed), whatever the catalogue size.

``workers > 0`` (profile setting) gathers batches ahead in DataLoader worker processes: worth it when
the store is on a slow disk or the catalogue is far larger than RAM; the CPU demo uses 0 (its data is
in the page cache, and extra processes compete for the 2 cores). On CUDA the batches are pinned and
copied asynchronously. Workers inherit the memory map by fork (Linux); where a worker must be
spawned, the map is reopened from its file rather than pickled.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

#: Images per chunk in evaluation passes over the catalogue (item vectors, embeddings).
EVAL_CHUNK = 256


def gather_rows(images: Any, index: np.ndarray | Sequence[int]) -> np.ndarray:
    """Rows ``index`` (in that order) of an (N,S,S,3) uint8 store, as a writable in-memory array."""
    rows = np.asarray(images[np.asarray(index, dtype=np.int64)])
    return rows if rows.flags.writeable and rows.flags.c_contiguous else np.array(rows, order="C")


def to_model_input(batch: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """(B,S,S,3) uint8 -> (B,3,S,S) float32 in [-1, 1] (on ``device``, converted there).

    The arithmetic is that of :func:`couturier.export.training.common.images_to_tensor`, batch by batch.
    """
    x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
    if device is not None and x.device != device:
        x = x.to(device, non_blocking=x.is_pinned())
    # channels-last strides, as the permuted view gives them: ~25% faster CPU convolutions than NCHW here
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


class ImageRows(Dataset[torch.Tensor]):
    """A map-style dataset whose items are whole batches: ``rows[index_array]`` -> uint8 (B,S,S,3).

    Used with ``batch_size=None`` and a list of index arrays as the sampler, so one worker reads one
    batch with a single fancy index into the store.
    """

    def __init__(self, images: Any) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(gather_rows(self.images, index))

    def __getstate__(self) -> dict[str, Any]:
        spec = _memmap_spec(self.images)
        return {"memmap": spec} if spec is not None else {"images": self.images}

    def __setstate__(self, state: dict[str, Any]) -> None:
        spec = state.get("memmap")
        if spec is None:
            self.images = state["images"]
        else:
            filename, dtype, shape, offset = spec
            self.images = np.memmap(filename, dtype=dtype, mode="r", shape=shape, offset=offset)


def _memmap_spec(images: Any) -> tuple[str, str, tuple[int, ...], int] | None:
    """How to reopen a whole-file-region memmap (not a view of one), or None to pickle the array."""
    if isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.filename:
        return str(images.filename), images.dtype.str, tuple(images.shape), int(images.offset)
    return None


def stream_batches(
    images: Any,
    index_batches: Sequence[np.ndarray],
    device: torch.device,
    *,
    workers: int = 0,
) -> Iterator[torch.Tensor]:
    """Model inputs (B,3,S,S) in [-1,1] on ``device`` for each index array, in order.

    ``workers`` > 0 gathers up to two batches per worker ahead in DataLoader workers (the order of the
    batches is unchanged, so results do not depend on it).
    """
    if workers <= 0:
        for index in index_batches:
            yield to_model_input(gather_rows(images, index), device)
        return
    loader = DataLoader(
        ImageRows(images),
        sampler=index_batches,  # each element is a whole batch of rows
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for batch in loader:
        yield to_model_input(batch, device)


def map_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: Any,
    device: torch.device,
    *,
    chunk: int = EVAL_CHUNK,
    rows: range | None = None,
) -> np.ndarray:
    """``fn`` over the store in chunks of ``chunk`` rows (no grad) -> float32 numpy (N, ...)."""
    rows = range(len(images)) if rows is None else rows
    out = []
    with torch.no_grad():
        for start in range(rows.start, rows.stop, chunk):
            x = to_model_input(gather_rows(images, np.arange(start, min(rows.stop, start + chunk))), device)
            out.append(fn(x).float().cpu().numpy())
    if not out:
        return np.zeros((0,), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
