"""Multiply-accumulate count of a model, by the convention of the InternImage paper.

Counted: every Conv2d (``output elements * in_channels/groups * kh * kw``), every Linear
(``output elements * in_features``), the attention of the pooling head (q/k/v projections and the
two attention products) and, for each DCNv3 module, the sampling term ``5 * H * W * P * C``
(P = 9 sampling points of the 3x3 kernel, or 8 without its centre) plus, with
center_feature_scale, its ``G x C`` gate projection per pixel; with unshared weights (the
ablation ``dcn_weights="unshared"``) its output projection is ``P`` ``C x C`` matrices per pixel,
``P*C*C`` MACs instead of ``C*C``. Biases, norms, activations and pooling are not counted.

InternImage models are counted in closed form from their module structure (microseconds, any
device, meta included); other modules by forward hooks while running on meta tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from internimage.layers import CrossAttention, DCNv3
from internimage.layers.dcnv3 import PointProjection
from internimage.ops import use_backend

__all__ = ["count_macs", "count_macs_by_hooks"]


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def _attention_macs(
    module: CrossAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> int:
    dim = module.q.in_features
    b, nq, _ = query.shape
    nk = key.shape[1]
    projections = (b * nq + b * nk + b * value.shape[1]) * dim * dim
    products = 2 * b * nq * nk * dim  # q @ k^T and attn @ v over all heads
    return projections + products


def _dcn_sampling_macs(module: DCNv3, pixels: int) -> int:
    """The sampling term, the centre-feature-scale gate and, with unshared weights, the
    per-point output projection of one DCNv3 call (no nn.Linear there for the counters to see)."""
    macs = 5 * pixels * module.points * module.channels
    if module.center_feature_scale:
        macs += pixels * module.group * module.channels
    if isinstance(module.output_proj, PointProjection):
        projection = module.output_proj
        macs += pixels * projection.points * projection.in_features * projection.out_features
    return macs


def _conv_out(conv: nn.Conv2d, h: int, w: int) -> tuple[int, int]:
    sizes = []
    for size, k, s, p, d in zip(
        (h, w), conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
    ):
        sizes.append((size + 2 * p - d * (k - 1) - 1) // s + 1)  # type: ignore[operator]
    return sizes[0], sizes[1]


def _conv_closed(conv: nn.Conv2d, n: int, h: int, w: int) -> tuple[int, int, int]:
    """(MACs, Ho, Wo) of a Conv2d on an ``[n, Cin, h, w]`` input."""
    ho, wo = _conv_out(conv, h, w)
    kh, kw = conv.kernel_size
    return n * ho * wo * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw, ho, wo


def _linear_closed(linear: nn.Module, tokens: int) -> int:
    if isinstance(linear, nn.Linear):
        return tokens * linear.in_features * linear.out_features
    return 0  # nn.Identity head


def _internimage_macs(model: nn.Module, n: int, h: int, w: int) -> int:
    """Closed-form count for :class:`InternImage` and :class:`InternImageFeatures`."""
    from internimage.models.internimage import InternImage, InternImageFeatures

    total = 0
    macs, h, w = _conv_closed(model.patch_embed.conv1, n, h, w)
    total += macs
    macs, h, w = _conv_closed(model.patch_embed.conv2, n, h, w)
    total += macs
    last = 3 if not isinstance(model, InternImageFeatures) else max(model.out_indices)
    sizes = []
    for i in range(last + 1):
        level = model.levels[i]
        pixels = n * h * w
        for block in level.blocks:
            dcn = block.dcn
            for linear in (dcn.input_proj, dcn.offset, dcn.mask, dcn.output_proj):
                total += _linear_closed(linear, pixels)
            total += _conv_closed(dcn.dw_conv[0], n, h, w)[0]
            total += _dcn_sampling_macs(dcn, pixels)
            total += _linear_closed(block.mlp.fc1, pixels) + _linear_closed(block.mlp.fc2, pixels)
        sizes.append((h, w))
        if level.downsample is not None and i < last:
            macs, h, w = _conv_closed(level.downsample.conv, n, h, w)
            total += macs
    if not isinstance(model, InternImage):
        return total
    if not model.config.use_clip_projector:
        total += _conv_closed(model.conv_head[0], n, h, w)[0]
        return total + _linear_closed(model.head, n)
    total += _conv_closed(model.dcnv3_head_x4[0], n, h, w)[0]
    h3, w3 = sizes[2]
    total += _conv_closed(model.dcnv3_head_x3, n, h3, w3)[0]
    tokens = h3 * w3
    attention = model.clip_projector.cross_dcn
    dim = attention.q.in_features
    total += n * (1 + 2 * tokens) * dim * dim + 2 * n * tokens * dim
    total += _linear_closed(attention.proj, n) + _linear_closed(model.head, n)
    return total


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on an input of ``input_shape``.

    The model's parameters are replaced by meta tensors for the count (the model itself is not
    changed), so it is cheap for any model size and device.

    Args:
        model: Any module built from Conv2d, Linear, :class:`CrossAttention` and :class:`DCNv3`.
        input_shape: ``(N, 3, H, W)``; the count covers the whole batch.

    Returns:
        The MAC count (an integer).
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    from internimage.models.internimage import InternImage, InternImageFeatures

    if type(model) in (InternImage, InternImageFeatures):
        n, _, h, w = (int(v) for v in input_shape)
        return _internimage_macs(model, n, h, w)
    return count_macs_by_hooks(model, input_shape)


def count_macs_by_hooks(model: nn.Module, input_shape: Sequence[int]) -> int:
    """:func:`count_macs` by running ``model`` on meta tensors with forward hooks.

    Works for any module built from Conv2d, Linear, :class:`CrossAttention` and :class:`DCNv3`
    (functional calls outside these modules are not seen).
    """
    total = 0

    def on_conv(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += _conv_macs(module, output)  # type: ignore[arg-type]

    def on_linear(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features  # type: ignore[operator]

    def on_attention(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += _attention_macs(module, *args)  # type: ignore[arg-type]

    def on_dcn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        n, h, w, _ = args[0].shape
        total += _dcn_sampling_macs(module, n * h * w)  # type: ignore[arg-type]

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
        elif isinstance(module, CrossAttention):
            handles.append(module.register_forward_hook(on_attention))
        elif isinstance(module, DCNv3):
            handles.append(module.register_forward_hook(on_dcn))
    meta_state = {
        name: torch.empty_like(t, device="meta")
        for name, t in (*model.named_parameters(), *model.named_buffers())
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), use_backend("reference"):
            functional_call(model, meta_state, (torch.empty(*input_shape, device="meta"),))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)
