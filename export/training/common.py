"""Shared training helpers: seeding, devices, image tensors, checkpoints, run directories."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from couturier.export.training.loaders import to_model_input

#: File name of a network's checkpoint in its run folder (``runs/<profile>/<network>/``).
CHECKPOINT = "checkpoint.pt"


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(prefer_cuda: bool) -> torch.device:
    """CUDA when asked for and available, CPU otherwise."""
    return torch.device("cuda" if prefer_cuda and torch.cuda.is_available() else "cpu")


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N,S,S,3) uint8 RGB -> (N,3,S,S) float32 in [-1, 1].

    For a batch: a catalogue is streamed in batches instead (:mod:`couturier.export.training.loaders`).
    """
    rows = np.ascontiguousarray(images)
    return to_model_input(rows if rows.flags.writeable else rows.copy())


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(N,3,S,S) float in [-1, 1] -> (N,S,S,3) uint8 RGB."""
    y = ((x.detach().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).numpy()


def save_checkpoint(path: Path, **payload: Any) -> None:
    """torch.save a dict (config as plain dict + state dicts) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON with a trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)!r}")


@contextmanager
def timer(store: dict[str, float], key: str) -> Iterator[None]:
    """Record the wall time of the block (seconds) under ``store[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = round(time.perf_counter() - start, 3)
