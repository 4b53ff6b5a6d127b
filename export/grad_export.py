"""Export ``(value, d sum(value) / d inputs[wrt])`` of a torch function as a standard-op ONNX model.

``torch.onnx.export`` cannot export code that calls ``torch.autograd.grad``. The recipe here:

1. wrap ``fn`` into ``f(*inputs) -> (value, *grads)`` that calls ``torch.autograd.grad`` inside;
2. trace ``f`` to an FX graph with ``make_fx(tracing_mode="symbolic")`` using
   :func:`~couturier.export.grad_decompositions.grad_decomposition_table`, which rewrites the
   backward ATen ops (conv, pooling, activations, norms) into forward ops;
3. export that graph with ``torch.onnx.export(dynamo=True)`` and per-input dynamic axes.

Samples must be independent along the batch axis (eval-mode BatchNorm, no cross-sample terms), so
the gradient of ``sum(value)`` gives every sample its own gradient. Per-sample values may be ``(B,)``
or ``(B, k)`` (the gradient is then that of the sum over ``k``).

``fn`` may also return a tuple ``(value, *aux)``: the auxiliary tensors (generated images, per-user
scores ...) are passed through un-differentiated and become extra outputs after the gradients, so
one call gives everything a latent optimiser step needs.

``make_fx`` is semi-private API: export with the pinned torch (2.13.0) only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.fx.experimental import _config as fx_config
from torch.fx.experimental.proxy_tensor import make_fx

from .grad_decompositions import grad_decomposition_table
from .onnx_io import DynamicAxes, OnnxExportError, _torch_onnx_export, build_dynamic_shapes, finalize_onnx

__all__ = [
    "export_value_and_grad",
    "per_sample_relative_error",
    "trace_value_and_grad",
    "value_and_grad",
]


def _wrt_tuple(wrt: int | Sequence[int], n: int) -> tuple[int, ...]:
    idx = (wrt,) if isinstance(wrt, int) else tuple(wrt)
    if not idx:
        raise ValueError("wrt names no input")
    out = tuple(i % n for i in idx)
    if len(set(out)) != len(out) or any(not -n <= i < n for i in idx):
        raise ValueError(f"wrt={wrt!r} is not a set of distinct input indices for {n} inputs")
    return out


def value_and_grad(
    fn: Callable[..., torch.Tensor], wrt: int | Sequence[int]
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``f(*inputs) -> (value, *[d sum(value) / d inputs[i] for i in wrt], *aux)`` via ``torch.autograd.grad``.

    ``fn`` returns the per-sample value tensor, or a tuple ``(value, *aux)`` whose ``aux`` tensors are
    returned detached after the gradients. Also the float64 eager reference for parity checks (call it
    with float64 modules and inputs).
    """

    def f(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = _wrt_tuple(wrt, len(inputs))
        with torch.enable_grad():
            xs = list(inputs)
            for i in idx:
                xs[i] = xs[i].detach().requires_grad_(True)
            out: Any = fn(*xs)  # the value tensor, or (value, *aux)
            value, aux = (out[0], tuple(out[1:])) if isinstance(out, (tuple, list)) else (out, ())
            if not isinstance(value, torch.Tensor) or not all(isinstance(a, torch.Tensor) for a in aux):
                raise TypeError(
                    f"fn must return a tensor of per-sample values or a tuple (value, *aux) of tensors,"
                    f" got {type(out).__name__}"
                )
            grads = torch.autograd.grad(value.sum(), [xs[i] for i in idx], allow_unused=True)
        grads = tuple(torch.zeros_like(xs[i]) if g is None else g for i, g in zip(idx, grads, strict=True))
        return (value.detach(), *(g.detach() for g in grads), *(a.detach() for a in aux))

    return f


def trace_value_and_grad(
    fn: Callable[..., torch.Tensor], example_inputs: tuple[torch.Tensor, ...], *, wrt: int | Sequence[int]
) -> torch.fx.GraphModule:
    """FX graph of :func:`value_and_grad` with backward ops decomposed into forward ops.

    All dims are traced symbolically without duck sizing (equal example sizes are not assumed
    equal); ``torch.export`` later pins every dim that is not declared dynamic.
    """
    f = value_and_grad(fn, wrt)
    with fx_config.patch(use_duck_shape=False):  # type: ignore[attr-defined]  # torch's config modules get patch() at run time
        return make_fx(
            f,
            decomposition_table=grad_decomposition_table(),
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
        )(*example_inputs)


def export_value_and_grad(
    fn: Callable[..., torch.Tensor],
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    wrt: int | tuple[int, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: DynamicAxes | None = None,
    dynamic_batch: bool = True,
    opset: int = 18,
) -> Path:
    """Export ``(value, d sum(value)/d inputs[i] for i in wrt)`` of ``fn`` to one ONNX file.

    ``fn(*inputs)`` returns per-sample values ``(B,)`` or ``(B, k)``; modules it closes over must be in
    eval mode (call ``.eval()`` first); it may return ``(value, *aux)`` (see :func:`value_and_grad`).
    ``output_names`` is the value name, then one name per ``wrt`` index, then one per aux output.
    Dynamic axes as in :func:`couturier.export.onnx_io.export_forward`: axis 0 of each input is
    ``batch`` unless declared, e.g. ``dynamic_axes={"theta": {0: "users"}, "w": {}}``. Example sizes on
    dynamic axes must be >= 2 (size-1 dims get specialised while tracing).
    Raises :class:`~couturier.export.onnx_io.OnnxExportError` on any failure.
    """
    example_inputs = tuple(example_inputs)
    idx = _wrt_tuple(wrt, len(example_inputs))
    if len(input_names) != len(example_inputs):
        raise ValueError(f"{len(example_inputs)} example inputs but {len(input_names)} input names")
    if len(output_names) < 1 + len(idx):
        raise ValueError(
            f"need at least {1 + len(idx)} output names (value + one gradient per wrt [+ aux]), got {len(output_names)}"
        )
    for i in idx:
        if not example_inputs[i].is_floating_point():
            raise ValueError(f"cannot differentiate w.r.t. non-float input {input_names[i]!r}")
    path = Path(path)
    shapes, _ = build_dynamic_shapes(input_names, example_inputs, dynamic_axes, dynamic_batch=dynamic_batch)
    try:
        gm = trace_value_and_grad(fn, example_inputs, wrt=idx)
    except Exception as exc:
        raise OnnxExportError(f"tracing value-and-grad for {path.name} failed: {type(exc).__name__}: {exc}") from exc
    n_out = _n_graph_outputs(gm)
    if n_out != len(output_names):
        raise ValueError(
            f"fn gives {n_out} outputs (value, {len(idx)} gradient(s), {n_out - 1 - len(idx)} aux) but"
            f" {len(output_names)} output names were given"
        )
    leftovers = sorted(
        {str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "backward" in str(n.target)}
    )
    try:
        _torch_onnx_export(
            gm,
            example_inputs,
            path,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=shapes if any(shapes) else None,
            opset=opset,
        )
    except OnnxExportError as exc:
        hint = f" (undecomposed backward ops: {leftovers}; add them to grad_decompositions)" if leftovers else ""
        raise OnnxExportError(f"{exc}{hint}") from exc
    finalize_onnx(path, opset=opset, input_names=input_names, output_names=output_names)
    return path


def _n_graph_outputs(gm: torch.fx.GraphModule) -> int:
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return len(out) if isinstance(out, (tuple, list)) else 1


def per_sample_relative_error(got: Any, ref: Any, *, eps: float = 1e-30) -> np.ndarray:
    """``||got_b - ref_b|| / ||ref_b||`` per sample ``b`` (axis 0), in float64."""
    g = np.asarray(got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    r = np.asarray(ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    if g.shape != r.shape:
        raise ValueError(f"shape mismatch {g.shape} vs {r.shape}")
    g = g.reshape(g.shape[0], -1)
    r = r.reshape(r.shape[0], -1)
    return np.linalg.norm(g - r, axis=1) / np.maximum(np.linalg.norm(r, axis=1), eps)
