"""The DCNv3 module: projections, depthwise offset branch and the deformable sampling operator."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from internimage.layers.norm import layer_norm_nchw_to_nhwc
from internimage.ops import dcnv3
from internimage.ops.geometry import DCNv3Geometry

__all__ = ["DCNv3"]


class _PointSoftmax(torch.autograd.Function):
    """Softmax over a short last dimension with explicit CPU passes (see softmax_over_points)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor) -> torch.Tensor:
        weights = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
        weights = weights.div_(weights.sum(dim=-1, keepdim=True))
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (weights,) = ctx.saved_tensors
        # d softmax(x) / dx applied to grad: y * (grad - sum(grad * y)), in differentiable ops.
        return weights * (grad - (grad * weights).sum(dim=-1, keepdim=True))


def softmax_over_points(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, the few sampling points of each group.

    Args:
        logits: ``[N, H, W, G, P]`` mask logits.

    Returns:
        The point weights, same shape and dtype.
    """
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        # PyTorch's CPU softmax and its backward vectorise along the reduced dimension, and
        # P = 9 is too short for that: explicit passes over whole tensors are about 3x faster
        # forward and faster backward too.
        return _PointSoftmax.apply(logits)
    return F.softmax(logits, dim=-1)


class DCNv3(nn.Module):
    """Deformable convolution v3 as used in every InternImage block, NHWC in and out.

    The block input goes through ``input_proj`` (the values that are sampled) and, separately,
    through a depthwise conv + LayerNorm + GELU branch ``dw_conv`` that predicts per-group offsets
    and softmax-normalised point weights. The sampled values pass through ``output_proj``.

    Args:
        channels: Width C.
        group: Number of groups G (C must be divisible by G).
        kernel_size: Side k of the sampling kernel.
        dw_kernel_size: Kernel of the depthwise conv in the offset branch (``None``: k).
        offset_scale: Scale of the base grid and the learned offsets.
        center_feature_scale: Blend the sampled features with ``input_proj`` output by a learned
            per-group sigmoid gate.
        remove_center: Drop the kernel's centre point.
    """

    def __init__(
        self,
        channels: int,
        group: int,
        *,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        offset_scale: float = 1.0,
        center_feature_scale: bool = False,
        remove_center: bool = False,
    ) -> None:
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"DCNv3: channels={channels} must be divisible by group={group}")
        dw_kernel = kernel_size if dw_kernel_size is None else dw_kernel_size
        if dw_kernel % 2 != 1:
            raise ValueError(f"DCNv3: dw_kernel_size must be odd, got {dw_kernel}")
        self.channels = channels
        self.group = group
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel
        self.offset_scale = float(offset_scale)
        self.center_feature_scale = center_feature_scale
        self.remove_center = remove_center
        self.geometry = DCNv3Geometry(
            kernel_size, 1, (kernel_size - 1) // 2, 1, group, self.offset_scale, remove_center
        )
        points = self.geometry.points
        self.points = points

        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw_kernel, 1, (dw_kernel - 1) // 2, groups=channels),
            layer_norm_nchw_to_nhwc(channels),
            nn.GELU(),
        )
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero offsets and uniform point weights at start; xavier-uniform projections."""
        for linear in (self.offset, self.mask):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        for linear in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        if self.center_feature_scale:
            nn.init.zeros_(self.center_feature_scale_proj_weight)
            nn.init.zeros_(self.center_feature_scale_proj_bias)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, C]`` -> ``[N, H, W, C]``."""
        n, h, w, _ = inp.shape
        x = self.input_proj(inp)
        x_proj = x
        # The offset branch reads the block input itself, not input_proj's output.
        x1 = self.dw_conv(inp.permute(0, 3, 1, 2))  # [N, H, W, C]
        offset = self.offset(x1)
        mask = self.mask(x1).reshape(n, h, w, self.group, self.points)
        mask = softmax_over_points(mask).reshape(n, h, w, self.group * self.points)
        geometry = self.geometry
        if x.is_meta:
            # Meta tensors carry shapes only (model construction, MAC counting): the sampling
            # keeps the spatial size (stride 1, "same" padding), so skip it.
            x = torch.empty_like(x)
        else:
            x = dcnv3(
                x, offset, mask, kernel_size=geometry.kernel_size, stride=geometry.stride,
                pad=geometry.pad, dilation=geometry.dilation, group=geometry.group,
                offset_scale=geometry.offset_scale, remove_center=geometry.remove_center,
            )
        if self.center_feature_scale:
            gate = torch.sigmoid(
                F.linear(
                    x1, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
                )
            )  # [N, H, W, G]
            # Each group's gate covers its C/G consecutive channels.
            gate = gate.repeat_interleave(self.channels // self.group, dim=-1)  # [N, H, W, C]
            x = x * (1 - gate) + x_proj * gate
        return self.output_proj(x)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, group={self.group}, kernel_size={self.kernel_size}, "
            f"dw_kernel_size={self.dw_kernel_size}, offset_scale={self.offset_scale}, "
            f"center_feature_scale={self.center_feature_scale}, "
            f"remove_center={self.remove_center}"
        )
