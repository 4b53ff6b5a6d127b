"""Data-parallel training across processes (``torchrun``): DistributedDataParallel helpers.

Launched by torchrun (``WORLD_SIZE`` > 1 in the environment), a training joins the process group
(NCCL on CUDA, one GPU per process = ``LOCAL_RANK``; gloo on the CPU), wraps its networks in
DistributedDataParallel and lets every rank draw the SAME global batches (same seeds), each rank
taking its own share of the rows (:func:`shard`). DDP averages the gradients, so a step of N
processes is a step on the global batch; the weights stay identical on every rank. Only rank 0
writes (checkpoints, metrics, PNGs); metrics are reduced across ranks where they differ.

Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op and training runs as before.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

#: How long a rank waits for the others at a collective (rank 0 evaluates alone between epochs).
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("COUTURIER_DIST_TIMEOUT_S", 4 * 3600)))


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": dist.get_backend() if self.enabled else None}


def current() -> DistEnv:
    """The initialised process group's view of this process (single-process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_from_env(prefer_cuda: bool) -> DistEnv:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once; else single-process.

    Backend: NCCL when CUDA is wanted and present (device ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return current()


def shutdown() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(env: DistEnv, prefer_cuda: bool) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is wanted and present, else the CPU."""
    if prefer_cuda and torch.cuda.is_available():
        return torch.device("cuda", env.local_rank if env.enabled else torch.cuda.current_device())
    return torch.device("cpu")


def shard(n_rows: int, env: DistEnv) -> np.ndarray:
    """Row positions of a global batch of ``n_rows`` this rank trains on (strided, as DistributedSampler).

    Never empty: a batch smaller than the world size gives a rank without rows a repeated row.
    """
    rows = np.arange(env.rank, n_rows, env.world_size)
    return rows if len(rows) or n_rows == 0 else np.array([env.rank % n_rows])


def wrap(module: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when distributed, else itself."""
    if not env.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def all_mean(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise mean of ``values`` over ranks (the values themselves when not distributed)."""
    if not env.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return (t / env.world_size).cpu().tolist()


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. one rank hit its time cap)."""
    if not env.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(value: T, env: DistEnv) -> T:
    """Rank 0's ``value`` on every rank (a picklable object, e.g. a validation AUC computed on rank 0)."""
    if not env.enabled:
        return value
    box: list[Any] = [value if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_to_main(value: T, env: DistEnv) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order, on rank 0 ([] on the others; [value] alone)."""
    if not env.enabled:
        return [value]
    out: list[Any] | None = [None] * env.world_size if env.is_main else None
    dist.gather_object(value, out, dst=0)
    return list(out) if out is not None else []


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if env.enabled:
        dist.barrier()
