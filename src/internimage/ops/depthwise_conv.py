"""Depthwise k x k convolution on channels-last tensors, with CPU kernels compiled by numba.

DCNv3's offset branch runs a depthwise convolution (stride 1, "same" zero padding) on every
block input. PyTorch computes it through oneDNN, whose channels-last depthwise backward is slow
on small maps: about 10x its own forward, several milliseconds for a ``[64, 2, 2, 128]`` batch.
The kernels here work on rows of ``W*C`` contiguous values, so every inner loop is one long,
unit-stride loop that LLVM vectorises whatever C is.

* Forward: ``out[n, y, x, c] = bias[c] + sum_ij weight[c, i, j] * inp[n, y+i-p, x+j-p, c]``,
  parallel over output rows. Each tap adds one shifted input row times that tap's weights
  (tiled along the row) into the output row.
* Input gradient: the same pass on the output gradient with the kernel flipped.
* Weight and bias gradients: parallel over (image, block of ``ROWS_PER_TASK`` rows); each task
  sums its products into its own buffer, and the buffers are added in task order. The task split
  does not depend on the number of threads, so results are bitwise repeatable.

Every sum runs in a fixed order; no fast-math flag is used. float32 and float64 run natively;
:func:`depthwise_conv_nhwc` uses ``torch.nn.functional.conv2d`` for every other case (other
dtypes and devices, autocast, tracing and compilation, tensor subclasses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange
from torch.autograd.function import once_differentiable

from internimage.ops.threads import match_torch_threads

__all__ = ["depthwise_conv_nhwc"]

_KERNEL_OPTIONS = {"parallel": True, "cache": True, "nogil": True}

#: Image rows per task of the weight-gradient pass.
ROWS_PER_TASK = 4


@njit(**_KERNEL_OPTIONS)
def _tap_rows(inp: np.ndarray, taps: np.ndarray, bias_row: np.ndarray, out: np.ndarray,
              channels: int) -> None:  # pragma: no cover - compiled
    """``out`` rows = ``bias_row`` + the sum over taps of shifted ``inp`` rows times the taps.

    ``inp`` and ``out`` are ``[N, H, W*C]``; ``taps`` is ``[k, k, W*C]`` (each tap's C weights
    repeated W times) and ``bias_row`` ``[W*C]``.
    """
    n, h, row_len = inp.shape
    k = taps.shape[0]
    pad = k // 2
    for task in prange(n * h):
        image = task // h
        y = task - image * h
        row = out[image, y]
        for t in range(row_len):
            row[t] = bias_row[t]
        for i in range(k):
            source_y = y + i - pad
            if source_y < 0 or source_y >= h:
                continue
            source = inp[image, source_y]
            for j in range(k):
                shift = (j - pad) * channels
                lo = max(0, -shift)
                hi = min(row_len, row_len - shift)
                if hi <= lo:
                    continue
                # Slices, so the loop index starts at zero: numba then emits no negative-index
                # wrap-around check, which would keep LLVM from vectorising the loop.
                target = row[lo:hi]
                weights = taps[i, j, lo:hi]
                values = source[lo + shift:hi + shift]
                for t in range(hi - lo):
                    target[t] += weights[t] * values[t]


@njit(**_KERNEL_OPTIONS)
def _weight_grad_parts(inp: np.ndarray, grad: np.ndarray, k: int, channels: int,
                       rows_per_task: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Per-task weight ``[tasks, k, k, C]`` and bias ``[tasks, C]`` gradient sums.

    ``inp`` and ``grad`` are ``[N, H, W*C]``. Task ``image * blocks + b`` covers rows
    ``b*rows_per_task ..`` of ``image``.
    """
    n, h, row_len = inp.shape
    width = row_len // channels
    pad = k // 2
    blocks = (h + rows_per_task - 1) // rows_per_task
    tasks = n * blocks
    weight_parts = np.zeros((tasks, k, k, channels), inp.dtype)
    bias_parts = np.zeros((tasks, channels), inp.dtype)
    for task in prange(tasks):
        image = task // blocks
        first = (task - image * blocks) * rows_per_task
        last = min(h, first + rows_per_task)
        # Sums along the row first ([k, k, W*C]), folded over W at the end of the task.
        sums = np.zeros((k, k, row_len), inp.dtype)
        bias_sum = np.zeros(row_len, inp.dtype)
        for y in range(first, last):
            g = grad[image, y]
            for t in range(row_len):
                bias_sum[t] += g[t]
            for i in range(k):
                source_y = y + i - pad
                if source_y < 0 or source_y >= h:
                    continue
                source = inp[image, source_y]
                for j in range(k):
                    shift = (j - pad) * channels
                    lo = max(0, -shift)
                    hi = min(row_len, row_len - shift)
                    if hi <= lo:
                        continue
                    target = sums[i, j, lo:hi]
                    g_part = g[lo:hi]
                    values = source[lo + shift:hi + shift]
                    for t in range(hi - lo):
                        target[t] += g_part[t] * values[t]
        for x in range(width):
            base = x * channels
            for c in range(channels):
                bias_parts[task, c] += bias_sum[base + c]
            for i in range(k):
                for j in range(k):
                    for c in range(channels):
                        weight_parts[task, i, j, c] += sums[i, j, base + c]
    return weight_parts, bias_parts


def _rows(tensor: torch.Tensor) -> np.ndarray:
    """``[N, H, W, C]`` tensor as a contiguous ``[N, H, W*C]`` numpy array (no copy if it is)."""
    n, h, w, c = tensor.shape
    return tensor.detach().contiguous().view(n, h, w * c).numpy()


def _tiled_taps(weight: torch.Tensor, width: int, flip: bool) -> np.ndarray:
    """``[C, 1, k, k]`` weights as ``[k, k, W*C]``: each tap's C weights repeated W times."""
    taps = weight.detach()[:, 0].permute(1, 2, 0)  # [k, k, C]
    if flip:
        taps = taps.flip(0, 1)
    return np.ascontiguousarray(np.tile(taps.numpy(), (1, 1, width)))


def _conv_rows(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               flip: bool) -> torch.Tensor:
    n, h, w, c = inp.shape
    out = torch.empty(n, h, w, c, dtype=inp.dtype)
    if out.numel() == 0:
        return out
    bias_row = (
        np.tile(bias.detach().numpy(), w) if bias is not None
        else np.zeros(w * c, dtype=_rows(inp).dtype)
    )
    match_torch_threads()
    _tap_rows(_rows(inp), _tiled_taps(weight, w, flip), bias_row, out.view(n, h, w * c).numpy(),
              c)
    return out


class _DepthwiseConvNHWC(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, inp: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(inp, weight)
        ctx.has_bias = bias is not None
        return _conv_rows(inp, weight, bias, flip=False)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inp, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_inp = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # Stride 1 with "same" padding: the transpose is the convolution with the kernel
            # flipped in both directions.
            grad_inp = _conv_rows(grad, weight, None, flip=True)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            n, h, w, c = inp.shape
            k = weight.shape[-1]
            if inp.numel() == 0:
                weight_sum = np.zeros((k, k, c), _rows(inp).dtype)
                bias_sum = np.zeros(c, _rows(inp).dtype)
            else:
                match_torch_threads()
                weight_parts, bias_parts = _weight_grad_parts(
                    _rows(inp), _rows(grad), k, c, ROWS_PER_TASK
                )
                # numpy adds the task sums one after another (the reduced axis is the outer
                # one), a fixed order.
                weight_sum, bias_sum = weight_parts.sum(axis=0), bias_parts.sum(axis=0)
            if ctx.needs_input_grad[1]:
                grad_weight = torch.from_numpy(weight_sum).permute(2, 0, 1).reshape(
                    weight.shape
                ).contiguous()
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = torch.from_numpy(bias_sum)
        return grad_inp, grad_weight, grad_bias


def _numba_eligible(*tensors: torch.Tensor | None) -> bool:
    """Whether the numba kernels can run: plain eager CPU float32/float64 tensors."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    return (
        dtype in (torch.float32, torch.float64)
        and all(
            # Exact types only: fake, functional and other subclass tensors have no data.
            (type(t) is torch.Tensor or type(t) is torch.nn.Parameter)
            and t.device.type == "cpu" and t.dtype == dtype
            for t in present
        )
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def depthwise_conv_nhwc(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Depthwise convolution, stride 1, zero "same" padding, channels-last in and out.

    Equal to ``F.conv2d(input.permute(0, 3, 1, 2), weight, bias, padding=k // 2,
    groups=C).permute(0, 2, 3, 1)``; eager float32/float64 CPU tensors take the numba kernels
    (module docstring), everything else that very call.

    Args:
        input: ``[N, H, W, C]`` features.
        weight: ``[C, 1, k, k]`` kernel (``nn.Conv2d(C, C, k, groups=C).weight``), k odd.
        bias: ``[C]`` or ``None``.

    Returns:
        ``[N, H, W, C]``, contiguous on the numba path.
    """
    if input.dim() != 4:
        raise ValueError(f"depthwise_conv_nhwc: input must be [N, H, W, C], got "
                         f"{tuple(input.shape)}")
    channels = input.shape[3]
    k = weight.shape[-1] if weight.dim() == 4 else -1
    if weight.shape != (channels, 1, k, k) or k % 2 != 1:
        raise ValueError(
            f"depthwise_conv_nhwc: weight must be [C, 1, k, k] with C = {channels} and k odd, "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"depthwise_conv_nhwc: bias must be [{channels}], got "
                         f"{tuple(bias.shape)}")
    if _numba_eligible(input, weight, bias):
        return _DepthwiseConvNHWC.apply(input, weight, bias)
    out = F.conv2d(input.permute(0, 3, 1, 2), weight, bias, padding=k // 2, groups=channels)
    return out.permute(0, 2, 3, 1)
