"""The DCNv3 module: projections, depthwise offset branch and the deformable sampling operator."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from internimage.layers.norm import layer_norm_nchw_to_nhwc
from internimage.ops import dcnv3
from internimage.ops.geometry import DCNv3Geometry
from internimage.ops.reference import dcnv3_point_terms

__all__ = [
    "DCNv3",
    "MASK_NORMALIZATIONS",
    "PointProjection",
    "WEIGHT_SHARING",
    "normalize_point_weights",
    "point_terms",
]

#: ``weight_sharing`` of :class:`DCNv3`: the paper's shared projection, or one per point (DCNv2).
WEIGHT_SHARING = ("shared", "unshared")
#: ``mask_normalization`` of :class:`DCNv3`: softmax over a group's points, or sigmoid per point.
MASK_NORMALIZATIONS = ("softmax", "sigmoid")


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


# Whether torch.export (and so the ONNX exporter) is tracing; torch.compiler.is_exporting is
# missing before torch 2.5, whose exporters do not reach this layer's code path.
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def softmax_over_points(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, the few sampling points of each group.

    Args:
        logits: ``[N, H, W, G, P]`` mask logits.

    Returns:
        The point weights, same shape and dtype.
    """
    if (
        logits.device.type == "cpu"
        and logits.dtype in (torch.float32, torch.float64)
        # An exported graph (ONNX, torch.export) gets one standard softmax node instead of the
        # explicit passes, which only pay off in PyTorch's own CPU kernels.
        and not _is_exporting()
    ):
        # PyTorch's CPU softmax and its backward vectorise along the reduced dimension, and
        # P = 9 is too short for that: explicit passes over whole tensors are about 3x faster
        # forward and faster backward too.
        return _PointSoftmax.apply(logits)
    return F.softmax(logits, dim=-1)


def normalize_point_weights(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The point weights the operator takes, from the mask projection's logits.

    Args:
        logits: ``[N, H, W, G, P]`` mask logits.
        kind: One of :data:`MASK_NORMALIZATIONS`: ``"softmax"`` over each group's points (the
            paper's DCNv3) or ``"sigmoid"`` per point (DCNv2).

    Returns:
        The weights, same shape and dtype.
    """
    if kind == "softmax":
        return softmax_over_points(logits)
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"mask normalization must be one of {MASK_NORMALIZATIONS}, got {kind!r}")


def point_terms(
    x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geometry: DCNv3Geometry
) -> torch.Tensor:
    """The per-point terms of the DCNv3 operator, not summed over the points: ``[N, Ho, Wo, P,
    G*D]`` (see :func:`internimage.ops.reference.dcnv3_point_terms`, pure PyTorch on any
    device); ``dcnv3(x, offset, mask)`` is their sum over the point axis."""
    return dcnv3_point_terms(x, offset, mask, geometry)


class PointProjection(nn.Module):
    """A separate linear map for each sampling point, summed over the points.

    ``out = sum_p weight[p] @ v_p + bias``: the output projection of the DCNv2-style (unshared)
    ablation of :class:`DCNv3`. It has ``P*C_out*C_in + C_out`` parameters where the shared
    projection has ``C_out*C_in + C_out``.

    Args:
        points: Number of sampling points P.
        in_features: Width C_in of each point's value.
        out_features: Output width C_out.
    """

    def __init__(self, points: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.points = points
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(points, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each point's matrix xavier-uniform (as one ``C_in -> C_out`` linear), zero bias."""
        bound = math.sqrt(6.0 / (self.in_features + self.out_features))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, P, C_in]`` per-point values -> ``[N, H, W, C_out]``."""
        n, h, w, p, c = values.shape
        # One matmul over the concatenated points: flat[o, p*C_in + c] = weight[p, o, c].
        flat = self.weight.permute(1, 0, 2).reshape(self.out_features, p * c)
        return F.linear(values.reshape(n, h, w, p * c), flat, self.bias)

    def extra_repr(self) -> str:
        return (
            f"points={self.points}, in_features={self.in_features}, "
            f"out_features={self.out_features}"
        )


class DCNv3(nn.Module):
    """Deformable convolution v3 as used in every InternImage block, NHWC in and out.

    The block input goes through ``input_proj`` (the values that are sampled) and, separately,
    through a depthwise conv + LayerNorm + GELU branch ``dw_conv`` that predicts per-group offsets
    and softmax-normalised point weights. The sampled values pass through ``output_proj``.

    Two options reproduce the DCNv2-like ablations of the paper (Sec. 3.1, Fig. 4); their defaults
    are the paper's DCNv3 and leave the module's keys unchanged:

    - ``weight_sharing="unshared"``: ``output_proj`` is a :class:`PointProjection`, a ``C x C``
      matrix per point applied before the sum over points,
      ``out = sum_p W_p (m_p x(p_p)) + b`` (``(P-1)*C*C`` more parameters). The per-point values
      are sampled by :func:`point_terms` (pure PyTorch, ``grid_sample``) on every device and
      whatever the backend: the numba and Triton kernels sum over the points inside.
    - ``mask_normalization="sigmoid"``: each point weight is ``sigmoid(logit)`` as in DCNv2
      instead of a softmax over the group's points; every backend takes it.

    Args:
        channels: Width C.
        group: Number of groups G (C must be divisible by G).
        kernel_size: Side k of the sampling kernel.
        dw_kernel_size: Kernel of the depthwise conv in the offset branch (``None``: k).
        offset_scale: Scale of the base grid and the learned offsets.
        center_feature_scale: Blend the sampled features with ``input_proj`` output by a learned
            per-group sigmoid gate.
        remove_center: Drop the kernel's centre point.
        weight_sharing: ``"shared"`` (one output projection after the sum over points) or
            ``"unshared"`` (one per point, DCNv2-style).
        mask_normalization: ``"softmax"`` over the points of a group or ``"sigmoid"`` per point.
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
        weight_sharing: str = "shared",
        mask_normalization: str = "softmax",
    ) -> None:
        super().__init__()
        if weight_sharing not in WEIGHT_SHARING:
            raise ValueError(
                f"DCNv3: weight_sharing must be one of {WEIGHT_SHARING}, got {weight_sharing!r}"
            )
        if mask_normalization not in MASK_NORMALIZATIONS:
            raise ValueError(
                f"DCNv3: mask_normalization must be one of {MASK_NORMALIZATIONS}, got "
                f"{mask_normalization!r}"
            )
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
        self.weight_sharing = weight_sharing
        # Read by the visualisation code to tell what the point weights mean.
        self.mask_normalization = mask_normalization
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
        self.output_proj: nn.Linear | PointProjection = (
            nn.Linear(channels, channels)
            if weight_sharing == "shared"
            else PointProjection(points, channels, channels)
        )
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero offsets and uniform point weights at start; xavier-uniform projections."""
        for linear in (self.offset, self.mask):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        nn.init.xavier_uniform_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        if isinstance(self.output_proj, PointProjection):
            self.output_proj.reset_parameters()
        else:
            nn.init.xavier_uniform_(self.output_proj.weight)
            nn.init.zeros_(self.output_proj.bias)
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
        mask = normalize_point_weights(mask, self.mask_normalization)
        mask = mask.reshape(n, h, w, self.group * self.points)
        if self.weight_sharing == "unshared":
            return self._forward_unshared(x, x1, offset, mask)
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
            gate = self._center_gate(x1)
            x = x * (1 - gate) + x_proj * gate
        return self.output_proj(x)

    def _center_gate(self, x1: torch.Tensor) -> torch.Tensor:
        """Per-channel gate of center_feature_scale from the offset branch: ``[N, H, W, C]``."""
        gate = torch.sigmoid(
            F.linear(x1, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias)
        )  # [N, H, W, G]
        # Each group's gate covers its C/G consecutive channels.
        return gate.repeat_interleave(self.channels // self.group, dim=-1)

    def _forward_unshared(
        self, x: torch.Tensor, x1: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``sum_p W_p (m_p x(p_p)) + b``: input_proj output ``x [N, H, W, C]``, offset-branch
        features ``x1``, offsets and normalised point weights -> ``[N, H, W, C]``."""
        n, h, w, c = x.shape
        if x.is_meta:
            terms = x.new_empty(n, h, w, self.points, c)  # shapes only, as in forward
        else:
            terms = point_terms(x, offset, mask, self.geometry)  # [N, H, W, P, C]
        if self.center_feature_scale:
            gate = self._center_gate(x1).unsqueeze(3)  # [N, H, W, 1, C]
            # The shared module projects (1 - gate) * sum_p terms_p + gate * x. Spreading the
            # gated x evenly over the points keeps exactly that when all W_p are equal.
            terms = terms * (1 - gate) + gate * (x.unsqueeze(3) / self.points)
        return self.output_proj(terms)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, group={self.group}, kernel_size={self.kernel_size}, "
            f"dw_kernel_size={self.dw_kernel_size}, offset_scale={self.offset_scale}, "
            f"center_feature_scale={self.center_feature_scale}, "
            f"remove_center={self.remove_center}, weight_sharing={self.weight_sharing}, "
            f"mask_normalization={self.mask_normalization}"
        )
