"""Mixed precision on the GPU: ``torch.autocast`` (bfloat16, or float16 with a gradient scaler).

Profile settings: ``amp`` (None = on when training on CUDA, off on the CPU) and ``amp_dtype``
("bfloat16" default; "float16" for GPUs without bfloat16, with loss scaling). With amp off every
call here is a no-op, so the CPU path computes exactly what it did without it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """Where autocast runs and in which dtype (``dtype`` None = full float32)."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> AbstractContextManager[Any]:
        """Context for forward passes (a disabled autocast when amp is off)."""
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler for one optimiser: active only for float16 (disabled = plain backward/step)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)

    def describe(self) -> str:
        return "off (float32)" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def resolve_precision(amp: bool | None, amp_dtype: str, device: torch.device) -> Precision:
    """The precision a profile asks for on ``device``.

    ``amp`` None means on for CUDA only. bfloat16 falls back to float16 on a GPU without it.
    """
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, not {amp_dtype!r}")
    on = device.type == "cuda" if amp is None else amp
    if not on:
        return Precision(device.type)
    dtype = AMP_DTYPES[amp_dtype]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("amp_dtype float16 needs a CUDA device; use bfloat16 on the CPU (or amp off)")
    return Precision(device.type, dtype)


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """zero_grad, (scaled) backward, (unscaled) step and scale update of one optimiser."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
