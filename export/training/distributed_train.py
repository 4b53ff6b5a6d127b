"""``couturier train`` on several processes (GPUs) with DistributedDataParallel, launched by torchrun::

    torchrun --standalone --nproc_per_node N -m couturier.export.training.distributed_train \\
        --profile quality --runs runs [--dataset DIR | --data-dir DIR] [--image-size S] [--only dvbpr ...] [--resume]

(``python -m torch.distributed.run`` is the same launcher.) Every process joins the process group
(:mod:`.distributed`: NCCL, one GPU per process, when the profile uses CUDA; gloo on CPUs), opens the
data (rank 0 first, so a resized cache or the simulated world is built once), and trains the
networks in order: DVBPR, the GAN and the InfoGAN data-parallel across all processes; SynthTriplet
on rank 0. Only rank 0 writes the run folder, which is the one ``couturier train`` writes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from couturier.export.training import distributed

T = TypeVar("T")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of ``couturier train`` (the CLI passes them through)."""
    from couturier.export.pipeline import NETWORKS

    p = argparse.ArgumentParser(prog="distributed_train", description="couturier train on N processes (torchrun)")
    p.add_argument("--profile", default="demo", help="demo, quality, full or tiny")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs folder; writes runs/<profile>/")
    p.add_argument("--dataset", type=Path, default=None, help="a dataset folder (read-only)")
    p.add_argument("--data-dir", type=Path, default=None, help="the simulated world's folder")
    p.add_argument("--image-size", type=int, default=None, help="train at this image side")
    p.add_argument("--only", action="append", choices=NETWORKS, help="train only these (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue each network from its resume.pt")
    p.add_argument("--max-seconds", type=float, default=None, help="stop each network after this many seconds")
    return p.parse_args(argv)


def wants_cuda(profile: str) -> bool:
    """Whether a profile trains on CUDA (then the process group uses NCCL)."""
    from couturier.export.training.profiles import dvbpr_profile

    return dvbpr_profile("demo" if profile == "tiny" else profile).use_cuda


def rank0_first(load: Callable[[], T], env: distributed.DistEnv) -> T:
    """``load()`` on rank 0, then on the other ranks (whatever it builds on disk is built once)."""
    if env.is_main:
        value = load()
        distributed.barrier(env)
        return value
    distributed.barrier(env)
    return load()


def main(argv: Sequence[str] | None = None) -> int:
    """Join torchrun's process group, train, leave it."""
    from couturier.export.data.selection import select_data
    from couturier.export.pipeline import NETWORKS, train_all

    args = parse_args(argv)
    env = distributed.init_from_env(wants_cuda(args.profile))
    try:
        data = rank0_first(
            lambda: select_data(
                args.profile,
                dataset=args.dataset,
                data_dir=args.data_dir,
                image_size=args.image_size,
                progress=env.is_main,
            ),
            env,
        )
        runs = train_all(
            data,
            args.runs,
            args.profile,
            progress=env.is_main,
            only=tuple(args.only or NETWORKS),
            resume=args.resume,
            max_seconds=args.max_seconds,
        )
        if env.is_main:
            print(f"trained into {runs.root} on {env.world_size} processes: {json.dumps(runs.wall_s)}")
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
