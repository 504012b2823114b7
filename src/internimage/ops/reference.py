"""Pure-PyTorch reference of the DCNv3 and DCNv4 core operators: the executable specification.

Runs on any device and dtype with PyTorch's own autograd. It samples with ``grid_sample`` as the
upstream fallback does, so it also serves as the speed and memory baseline of the benchmarks, but it
builds the sampling coordinates in at least float32 (upstream builds them in the input dtype, which
loses whole pixels in float16 on large images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from internimage.ops.geometry import (
    DCNv3Geometry,
    dcnv4_geometry,
    validate_dcnv4_inputs,
    validate_inputs,
)
from internimage.ops.packing import unpack_offset_mask

__all__ = ["dcnv3_point_terms", "dcnv3_reference", "dcnv4_reference", "sampling_coordinates"]


def sampling_coordinates(
    offset: torch.Tensor, geometry: DCNv3Geometry, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-pixel coordinates of every sampling point.

    An integer coordinate is a pixel centre. A point whose coordinate is not finite (NaN or inf
    offsets) is moved to -2, where all four bilinear corners are outside the image, so it reads
    zero and passes no gradient. Finite coordinates are clamped to [-2, size + 1]; beyond that range
    every corner is outside anyway, so the clamp changes neither values nor gradients.

    Args:
        offset: ``[N, Ho, Wo, G*P*2]`` learned offsets (dx, dy per point), float32 or float64.
        geometry: The operator's scalar arguments.
        height: Input height H.
        width: Input width W.

    Returns:
        ``(x, y)``, each ``[N, Ho, Wo, G, P]`` in the dtype of ``offset``.
    """
    n, ho, wo, _ = offset.shape
    g, p = geometry.group, geometry.points
    dtype, device = offset.dtype, offset.device
    centre_shift = geometry.half - geometry.pad
    # Kernel-centre coordinates of every output pixel, [Ho] and [Wo].
    rows = torch.arange(ho, device=device, dtype=dtype) * geometry.stride + centre_shift
    cols = torch.arange(wo, device=device, dtype=dtype) * geometry.stride + centre_shift
    base = torch.tensor(geometry.kernel_grid(), device=device, dtype=dtype)  # [P, 2] as (dx, dy)
    learned = offset.reshape(n, ho, wo, g, p, 2)
    x = cols.view(1, 1, wo, 1, 1) + (base[:, 0] + learned[..., 0]) * geometry.offset_scale
    y = rows.view(1, ho, 1, 1, 1) + (base[:, 1] + learned[..., 1]) * geometry.offset_scale
    finite = torch.isfinite(x) & torch.isfinite(y)
    outside = torch.full_like(x, -2.0)
    x = torch.where(finite, x.clamp(-2.0, width + 1.0), outside)
    y = torch.where(finite, y.clamp(-2.0, height + 1.0), outside)
    return x, y


def dcnv3_reference(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    *,
    kernel_size: int = 3,
    stride: int = 1,
    pad: int = 1,
    dilation: int = 1,
    group: int,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> torch.Tensor:
    """DCNv3 core operator, channels-last, computed with ``grid_sample``.

    ``out[n, ho, wo, g*D + d] = sum_p mask[n, ho, wo, g*P + p] * bilinear(input_gd, y, x)``
    with ``input_gd = input[n, :, :, g*D + d]``, the coordinates of :func:`sampling_coordinates` and
    zero padding outside the image.

    Args:
        input: ``[N, H, W, G*D]``.
        offset: ``[N, Ho, Wo, G*P*2]``, (dx, dy) per point.
        mask: ``[N, Ho, Wo, G*P]``, used as given (not normalised here).
        kernel_size: Kernel side k.
        stride: Output stride.
        pad: Zero padding.
        dilation: Spacing of the base kernel grid.
        group: Number of groups G.
        offset_scale: Scale of the base grid and the offsets.
        remove_center: Drop the centre point (odd k only).

    Returns:
        ``[N, Ho, Wo, G*D]`` in the dtype of ``input``.
    """
    geometry = DCNv3Geometry(
        kernel_size, stride, pad, dilation, group, float(offset_scale), bool(remove_center)
    )
    terms, (n, ho, wo) = _weighted_samples(input, offset, mask, geometry)
    c = input.shape[-1]
    out = terms.sum(dim=-1)  # [N*G, D, Ho*Wo]
    out = out.reshape(n, group, c // group, ho, wo).permute(0, 3, 4, 1, 2).reshape(n, ho, wo, c)
    return out.to(input.dtype)


def _weighted_samples(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geometry: DCNv3Geometry
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Every point's bilinear sample times its weight, in the compute dtype.

    Returns:
        ``[N*G, D, Ho*Wo, P]`` terms and ``(N, Ho, Wo)``.
    """
    ho, wo = validate_inputs(input, offset, mask, geometry)
    n, h, w, c = input.shape
    g, p = geometry.group, geometry.points
    d = c // g
    # Half-precision inputs are computed in float32; float64 stays float64.
    compute = torch.promote_types(input.dtype, torch.float32)
    x, y = sampling_coordinates(offset.to(compute), geometry, h, w)  # [N, Ho, Wo, G, P]
    # grid_sample with align_corners=False maps pixel coordinate x to (2x + 1) / W - 1.
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * g, ho * wo, p, 2)
    # [N, H, W, G*D] -> [N*G, D, H, W]
    planes = input.to(compute).reshape(n, h, w, g, d).permute(0, 3, 4, 1, 2).reshape(n * g, d, h, w)
    sampled = F.grid_sample(
        planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # [N*G, D, Ho*Wo, P]
    weights = mask.to(compute).reshape(n, ho * wo, g, p).permute(0, 2, 1, 3)
    return sampled * weights.reshape(n * g, 1, ho * wo, p), (n, ho, wo)


def dcnv3_point_terms(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geometry: DCNv3Geometry
) -> torch.Tensor:
    """The terms of :func:`dcnv3_reference` before its sum over the kernel points.

    DCNv2-style layers with a weight per point need them one by one; the numba and Triton
    kernels sum inside, so this is the only path that gives them (on any device).

    Args:
        input: ``[N, H, W, G*D]``.
        offset: ``[N, Ho, Wo, G*P*2]``, (dx, dy) per point.
        mask: ``[N, Ho, Wo, G*P]``, used as given.
        geometry: The operator's scalar arguments.

    Returns:
        ``[N, Ho, Wo, P, G*D]`` in the dtype of ``input``: channel ``g*D + d`` of point ``p`` is
        ``mask[..., g*P + p]`` times the bilinear sample of ``input[..., g*D + d]`` there.
    """
    terms, (n, ho, wo) = _weighted_samples(input, offset, mask, geometry)
    c, g, p = input.shape[-1], geometry.group, geometry.points
    # [N*G, D, Ho*Wo, P] -> [N, Ho, Wo, P, G*D]
    terms = terms.reshape(n, g, c // g, ho, wo, p).permute(0, 3, 4, 5, 1, 2)
    return terms.reshape(n, ho, wo, p, c).to(input.dtype)


def dcnv4_reference(
    input: torch.Tensor,
    offset_mask: torch.Tensor,
    *,
    kernel_size: int = 3,
    stride: int = 1,
    pad: int = 1,
    dilation: int = 1,
    group: int,
    group_channels: int,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> torch.Tensor:
    """DCNv4 core operator, channels-last: DCNv3 on the unpacked ``offset_mask``.

    DCNv4 samples exactly as DCNv3 (same points in the same order, zero padding outside the
    image, weights used as given); only the layout of the offsets and weights differs. Group g
    owns columns ``[3Kg, 3K(g+1))`` of ``offset_mask``: K (dx, dy) pairs, then K weights; the
    columns from ``3GK`` on are padding, never read, and get a zero gradient.

    Args:
        input: ``[N, H, W, G*D]``.
        offset_mask: ``[N, Ho, Wo, P]`` with ``P = ceil(3*G*K / 8) * 8``.
        kernel_size: Kernel side k.
        stride: Output stride.
        pad: Zero padding.
        dilation: Spacing of the base kernel grid.
        group: Number of groups G.
        group_channels: Channels per group D.
        offset_scale: Scale of the base grid and the offsets.
        remove_center: Drop the centre point (odd k only), so K = k*k - 1.

    Returns:
        ``[N, Ho, Wo, G*D]`` in the dtype of ``input``.
    """
    geometry = dcnv4_geometry(
        kernel_size, stride, pad, dilation, group, float(offset_scale), bool(remove_center)
    )
    validate_dcnv4_inputs(input, offset_mask, geometry, group_channels)
    offset, mask = unpack_offset_mask(offset_mask, group, geometry.points)
    return dcnv3_reference(
        input, offset, mask, kernel_size=kernel_size, stride=stride, pad=pad, dilation=dilation,
        group=group, offset_scale=offset_scale, remove_center=remove_center,
    )
