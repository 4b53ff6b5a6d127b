"""Decompositions of autograd backward ops into forward ops that export to standard ONNX.

Used when tracing ``(value, d value / d z)`` with ``make_fx`` (see :mod:`couturier.export.grad_export`):
the traced graph contains backward ATen ops (``convolution_backward``, pooling backwards, ...) that the
ONNX exporter cannot translate. Each one is rewritten here in terms of ops it can:

* ``convolution_backward``: grad of a convolution is a transposed convolution with the same weight
  and vice versa; weight gradients are convolutions with batch and channel axes swapped (per group).
* ``avg_pool2d_backward``: a transposed "sum pool" (ones kernel) of ``grad / divisor``, with the
  per-window divisor of PyTorch (padding, ``ceil_mode``, ``count_include_pad``,
  ``divisor_override`` all honoured).
* ``_adaptive_avg_pool2d_backward``: the adaptive pooling matrices ``P_h``/``P_w`` built from index
  arithmetic, ``grad_in = P_h^T grad P_w``.
* ``threshold_backward`` (ReLU): ``g * (x > t)``; a multiply by a mask is faster than ``Where`` in
  onnxruntime.

Everything else comes from PyTorch's own decompositions (:data:`TORCH_BACKWARD_OPS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch._decomp import get_decompositions

aten = torch.ops.aten

__all__ = ["TORCH_BACKWARD_OPS", "grad_decomposition_table"]


def _spatial(t: torch.Tensor, n: int) -> list[Any]:
    return list(t.shape[-n:])


def _conv_nd(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    stride: Sequence[Any],
    padding: Sequence[Any],
    dilation: Sequence[Any],
    transposed: bool,
    output_padding: Sequence[Any],
    groups: int,
) -> torch.Tensor:
    return aten.convolution.default(
        x, w, None, list(stride), list(padding), list(dilation), transposed, list(output_padding), groups
    )


def _fit(t: torch.Tensor, sizes: Sequence[Any], offsets: Sequence[Any] | None = None) -> torch.Tensor:
    """Window ``[offset, offset + size)`` of each trailing spatial axis, zero-padded at the end."""
    n = len(sizes)
    offsets = list(offsets) if offsets is not None else [0] * n
    for i, size in enumerate(sizes):
        dim = t.dim() - n + i
        need = offsets[i] + size
        have = t.shape[dim]
        if have < need:
            t = F.pad(t, [0, 0] * (t.dim() - dim - 1) + [0, need - have])
        if offsets[i] != 0 or have > need:
            t = t.narrow(dim, offsets[i], size)
    return t


def _conv_weight_grad(
    inp: torch.Tensor,
    gy: torch.Tensor,
    *,
    stride: Sequence[Any],
    padding: Sequence[Any],
    dilation: Sequence[Any],
    groups: int,
    kernel: Sequence[Any],
) -> torch.Tensor:
    """``d/dW`` of ``conv(inp, W)`` given ``gy``; returns ``(C_gy, C_inp/groups, *kernel)``.

    out[o, c, a] = sum_n sum_h inp_pad[n, c, a*dilation + h*stride] * gy[n, o, h]: a convolution of
    ``inp`` (batch and channel swapped) by ``gy`` (likewise) with stride and dilation swapped.
    """
    parts = []
    ci, co = inp.shape[1] // groups, gy.shape[1] // groups
    for g in range(groups):
        x_g = inp[:, g * ci : (g + 1) * ci].transpose(0, 1)  # (ci, N, ...)
        gy_g = gy[:, g * co : (g + 1) * co].transpose(0, 1)  # (co, N, ...)
        r = _conv_nd(
            x_g,
            gy_g,
            stride=dilation,
            padding=padding,
            dilation=stride,
            transposed=False,
            output_padding=[0] * len(kernel),
            groups=1,
        )  # (ci, co, k' ...)
        parts.append(_fit(r, kernel).transpose(0, 1))
    return parts[0] if groups == 1 else torch.cat(parts, 0)


def convolution_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Sequence[Any] | None,
    stride: Sequence[Any],
    padding: Sequence[Any],
    dilation: Sequence[Any],
    transposed: bool,
    output_padding: Sequence[Any],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``aten.convolution_backward`` as (transposed) convolutions, for 1-D/2-D/3-D, any groups."""
    n = weight.dim() - 2
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    kernel = _spatial(weight, n)
    in_sizes = _spatial(input, n)
    gi = gw = gb = None
    if output_mask[0]:
        if not transposed:
            # y = conv(x): dx = conv_transpose(gy, W); output_padding recovers the rows the forward
            # stride dropped, then _fit makes the size exact.
            out_sizes = _spatial(grad_output, n)
            op = [
                in_sizes[i] - ((out_sizes[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
                for i in range(n)
            ]
            op_ok = [max(0, min(op[i], max(stride[i], dilation[i]) - 1)) for i in range(n)]
            gi = _conv_nd(
                grad_output,
                weight,
                stride=stride,
                padding=padding,
                dilation=dilation,
                transposed=True,
                output_padding=op_ok,
                groups=groups,
            )
        else:
            # y = conv_transpose(x): dx = conv(gy, W).
            gi = _conv_nd(
                grad_output,
                weight,
                stride=stride,
                padding=padding,
                dilation=dilation,
                transposed=False,
                output_padding=[0] * n,
                groups=groups,
            )
        gi = _fit(gi, in_sizes)
    if output_mask[1]:
        if not transposed:
            gw = _conv_weight_grad(
                input,
                grad_output,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                kernel=kernel,
            )
        else:
            # conv_transpose weight is (C_in, C_out/groups, k): the roles of input and grad swap.
            gw = _conv_weight_grad(
                grad_output,
                input,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                kernel=kernel,
            )
    if output_mask[2]:
        gb = grad_output.sum(dim=[0, *range(2, grad_output.dim())])
    return gi, gw, gb


def avg_pool2d_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """``aten.avg_pool2d_backward``: transposed sum-pool of ``grad / divisor``."""
    kh, kw = (list(kernel_size) * 2)[:2] if len(kernel_size) == 1 else list(kernel_size)
    stride = list(stride) if len(stride) else [kh, kw]
    sh, sw = (stride * 2)[:2] if len(stride) == 1 else stride
    ph, pw = (list(padding) * 2)[:2] if len(padding) == 1 else list(padding)
    h, w = input.shape[-2:]
    ho, wo = grad_output.shape[-2:]
    g = grad_output.reshape(-1, 1, ho, wo)
    simple = divisor_override is None and not ceil_mode and (count_include_pad or (ph == 0 and pw == 0))
    if simple:
        g = g / (kh * kw)
    elif divisor_override is not None:
        g = g / divisor_override
    else:
        # per-window divisor as PyTorch defines it: the window clipped to the padded extent
        # (count_include_pad) or to the input (not), counted by a ones-kernel convolution. (The
        # forward op cannot be reused for this: ONNX AveragePool has no divisor_override.)
        if count_include_pad:
            base = torch.ones((1, 1, h + 2 * ph, w + 2 * pw), dtype=grad_output.dtype, device=grad_output.device)
        else:
            base = F.pad(torch.ones((1, 1, h, w), dtype=grad_output.dtype, device=grad_output.device), [pw, pw, ph, ph])
        extra_h = max(0, (ho - 1) * sh + kh - (h + 2 * ph))
        extra_w = max(0, (wo - 1) * sw + kw - (w + 2 * pw))
        if extra_h or extra_w:
            base = F.pad(base, [0, extra_w, 0, extra_h])
        ones_k = torch.ones((1, 1, kh, kw), dtype=grad_output.dtype, device=grad_output.device)
        count = aten.convolution.default(base, ones_k, None, [sh, sw], [0, 0], [1, 1], False, [0, 0], 1)
        g = g / _fit(count, [ho, wo])
    ones_k = torch.ones((1, 1, kh, kw), dtype=grad_output.dtype, device=grad_output.device)
    # full (unpadded) transposed sum-pool, then the window that maps onto the unpadded input
    gi = aten.convolution.default(g, ones_k, None, [sh, sw], [0, 0], [1, 1], True, [0, 0], 1)
    gi = _fit(gi, [h, w], [ph, pw])
    return gi.reshape(input.shape)


def _adaptive_matrix(n_in: Any, n_out: Any, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) averaging matrix of PyTorch's adaptive pooling (start=floor, end=ceil)."""
    i = torch.arange(n_out, device=like.device).unsqueeze(1)
    j = torch.arange(n_in, device=like.device).unsqueeze(0)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    mask = ((j >= start) & (j < end)).to(like.dtype)
    return mask / (end - start).to(like.dtype)


def adaptive_avg_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """``aten._adaptive_avg_pool2d_backward``: ``P_h^T @ grad @ P_w``."""
    h, w = input.shape[-2:]
    ho, wo = grad_output.shape[-2:]
    ph = _adaptive_matrix(h, ho, grad_output)  # (ho, h)
    pw = _adaptive_matrix(w, wo, grad_output)  # (wo, w)
    return torch.matmul(torch.matmul(ph.transpose(0, 1), grad_output), pw)


def max_pool2d_with_indices_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
    indices: torch.Tensor,
) -> torch.Tensor:
    """``aten.max_pool2d_with_indices_backward`` without the indices.

    For non-overlapping windows (stride == kernel, no padding/dilation: ``MaxPool2d(k)``) the gradient
    is ``upsample(g) * (x == upsample(maxpool(x)))`` with nearest upsampling: plain element-wise ops
    that onnxruntime runs ~2x faster than a MaxPool with an ``Indices`` output plus ScatterElements.
    The forward ``MaxPool`` then needs no indices (:func:`~couturier.export.onnx_io.drop_unused_pool_indices`
    removes them). Exact ties inside one window all receive the gradient (PyTorch routes it to the
    first); for float activations ties are the zeros of a preceding ReLU, whose backward zeroes
    them again. Other configurations use PyTorch's scatter-based decomposition.
    """
    k = list(kernel_size) * 2 if len(kernel_size) == 1 else list(kernel_size)
    st = (list(stride) * 2 if len(stride) == 1 else list(stride)) if len(stride) else k
    pad = list(padding) * 2 if len(padding) == 1 else list(padding)
    dil = list(dilation) * 2 if len(dilation) == 1 else list(dilation)
    args = (grad_output, input, kernel_size, stride, padding, dilation, ceil_mode, indices)
    if st != k or any(pad) or any(d != 1 for d in dil) or input.dim() != 4:
        return _TORCH_MAXPOOL_BACKWARD(*args)
    kh, kw = k
    h, w = input.shape[-2:]
    ho, wo = grad_output.shape[-2:]
    if ho * kh > h or wo * kw > w:  # ceil_mode windows hanging over the edge
        return _TORCH_MAXPOOL_BACKWARD(*args)
    x = _fit(input, [ho * kh, wo * kw])
    pooled = aten.max_pool2d_with_indices.default(input, [kh, kw], [kh, kw], [0, 0], [1, 1], ceil_mode)[0]
    up = [ho * kh, wo * kw]
    mask = (x == aten.upsample_nearest2d.default(pooled, up)).to(grad_output.dtype)
    gi = aten.upsample_nearest2d.default(grad_output, up) * mask
    return _fit(gi, [h, w])


def threshold_backward(grad_output: torch.Tensor, self: torch.Tensor, threshold: float) -> torch.Tensor:
    """ReLU/threshold backward as ``g * (x > t)`` (a Mul, not a Where)."""
    return grad_output * (self > threshold).to(grad_output.dtype)


#: Backward ops whose stock PyTorch decompositions export cleanly.
TORCH_BACKWARD_OPS: tuple[Any, ...] = (
    aten.tanh_backward,
    aten.sigmoid_backward,
    aten.leaky_relu_backward,
    aten.elu_backward,
    aten.gelu_backward,
    aten.hardtanh_backward,
    aten.softplus_backward,
    aten.silu_backward,
    aten.native_batch_norm_backward,
    aten.native_layer_norm_backward,
    aten.native_group_norm_backward,
    aten._softmax_backward_data,
    aten._log_softmax_backward_data,
    aten.mse_loss_backward,
    aten.embedding_dense_backward,
    aten.select_backward,
    aten.slice_backward,
    aten.index_select_backward,
    aten.diagonal_backward,
    aten.unfold_backward,
)

_TORCH_MAXPOOL_BACKWARD = get_decompositions([aten.max_pool2d_with_indices_backward])[
    aten.max_pool2d_with_indices_backward.default
]


def grad_decomposition_table() -> dict[Any, Callable[..., Any]]:
    """The decomposition table for ``make_fx`` when tracing value-and-gradient functions."""
    table: dict[Any, Callable[..., Any]] = dict(get_decompositions(list(TORCH_BACKWARD_OPS)))
    table[aten.convolution_backward.default] = convolution_backward
    table[aten.avg_pool2d_backward.default] = avg_pool2d_backward
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    table[aten.max_pool2d_with_indices_backward.default] = max_pool2d_with_indices_backward
    table[aten.threshold_backward.default] = threshold_backward
    return table
