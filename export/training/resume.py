"""Resumable training state: ``resume.pt`` in a run folder, written every ``checkpoint_every`` steps.

It holds everything a training needs to continue exactly where it was: network and optimiser state
dicts (EMA and gradient scalers included), the step/epoch reached, the training curves so far, every
random number generator (python, numpy, torch CPU/CUDA and the training's own generators) and the
profile. ``train_*(..., resume=True)`` continues from it; on the CPU a resumed run ends with the
same weights as an uninterrupted one. The served ``checkpoint.pt`` is written separately, at the
end, in the format the loaders read.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from couturier.export.training.common import load_checkpoint, save_checkpoint
from couturier.export.training.distributed import DistEnv

#: File name of the resumable state in a run folder.
RESUME = "resume.pt"
#: Profile fields a resumed run may change: how long and how it runs, not what one step computes.
OPERATIONAL_FIELDS = frozenset(
    {"steps", "epochs", "max_seconds", "workers", "checkpoint_every", "threads", "log_every", "patience", "use_cuda"}
)


def capture_rng(
    generators: Mapping[str, torch.Generator] | None = None,
    numpy_rngs: Mapping[str, np.random.Generator] | None = None,
) -> dict[str, Any]:
    """States of the global generators plus the named torch / numpy generators of a training."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy_global": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "torch_generators": {k: g.get_state() for k, g in (generators or {}).items()},
        "numpy_generators": {k: g.bit_generator.state for k, g in (numpy_rngs or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(
    state: Mapping[str, Any],
    generators: Mapping[str, torch.Generator] | None = None,
    numpy_rngs: Mapping[str, np.random.Generator] | None = None,
) -> None:
    """Put back what :func:`capture_rng` recorded (into the same named generators)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy_global"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, g in (generators or {}).items():
        g.set_state(state["torch_generators"][key])
    for key, rng in (numpy_rngs or {}).items():
        rng.bit_generator.state = state["numpy_generators"][key]


def rank_rng(states: Sequence[Mapping[str, Any]], env: DistEnv) -> Mapping[str, Any]:
    """This rank's entry of RNG states saved one per rank (rank 0's when resumed on more processes)."""
    return states[env.rank] if env.rank < len(states) else states[0]


def load_scaler(scaler: torch.amp.GradScaler, state: Mapping[str, Any]) -> None:
    """Restore a gradient scaler (a disabled one saves nothing: then there is nothing to restore)."""
    if state and scaler.is_enabled():
        scaler.load_state_dict(dict(state))


def save_resume(run_dir: Path, env: DistEnv, **payload: Any) -> None:
    """Write ``run_dir/resume.pt`` atomically, on rank 0 only."""
    if env.is_main:
        save_checkpoint(Path(run_dir) / RESUME, **payload)


def load_resume(run_dir: Path, profile: Mapping[str, Any]) -> dict[str, Any] | None:
    """The resumable state of ``run_dir``, or None when there is none (a fresh start).

    Refuses (ValueError) a state saved under a profile that computes differently.
    """
    path = Path(run_dir) / RESUME
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    saved = dict(state.get("profile") or {})
    differ = sorted(
        k for k in set(saved) | set(profile) if k not in OPERATIONAL_FIELDS and saved.get(k) != profile.get(k)
    )
    if differ:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {profile.get(k)!r}" for k in differ)
        raise ValueError(
            f"{path} was saved by a training with other settings ({changes}); resume with the same profile, "
            f"or delete {path} (or train without resume) to start again"
        )
    return state


def due(step: int, every: int) -> bool:
    """Whether a resumable checkpoint is due after ``step`` steps (``every`` 0 = never mid-run)."""
    return every > 0 and step > 0 and step % every == 0
