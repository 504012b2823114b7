"""The public DCNv3 and DCNv4 functions: validate their arguments and dispatch to a backend."""

from __future__ import annotations

import torch

from internimage.ops.backends import resolve_backend
from internimage.ops.geometry import (
    DCNv3Geometry,
    dcnv4_geometry,
    validate_dcnv4_inputs,
    validate_inputs,
)
from internimage.ops.reference import dcnv3_reference, dcnv4_reference
from internimage.ops.registration import dcnv3_op, dcnv4_op

__all__ = ["dcnv3", "dcnv4"]

#: Dtypes that autocast lowers; float64 is left alone, as autocast itself does.
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast the tensors to the autocast dtype when autocast is on for their device.

    Under CUDA autocast the module's linears give half-precision input and offsets while its
    softmax gives a float32 mask; like a convolution, the operator then runs in the autocast
    dtype (upstream casts the mask to the input dtype for the same reason).
    """
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return tensors  # the validation names the culprit
    device_type = tensors[0].device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.dtype in _AUTOCAST_ELIGIBLE else t for t in tensors)


def dcnv3(
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
    """DCNv3 deformable sampling, channels-last, as the upstream release defines it.

    For output pixel (ho, wo), group g with D = C // G channels, and kernel point p at base
    position (bx, by) of the k x k grid (x outer, y inner):

    ``x = wo*stride - pad + half + (bx + offset_x) * offset_scale`` (same for y with ho), and
    ``out[..., g*D + d] = sum_p mask[..., g*P + p] * bilinear(input[..., g*D + d], y, x)``,

    where ``half = dilation*(k-1)//2`` and bilinear() reads zero outside the image. A point whose
    offset is NaN or infinite contributes zero and receives zero gradient.

    Under ``torch.autocast`` the three tensors are first cast to the autocast dtype (float64
    tensors are left as they are), so a float32 mask meets half-precision features safely.

    The backend is chosen by device (numba on CPU, Triton on CUDA, the reference elsewhere) unless
    forced with :func:`internimage.ops.use_backend` or ``INTERNIMAGE_DCNV3_BACKEND``.

    Args:
        input: ``[N, H, W, G*D]`` features.
        offset: ``[N, Ho, Wo, G*P*2]`` learned offsets, (dx, dy) for each group and point.
        mask: ``[N, Ho, Wo, G*P]`` weight of each point (not normalised by the operator).
        kernel_size: Kernel side k (1 or more).
        stride: Output stride.
        pad: Zero padding on each side.
        dilation: Spacing of the base kernel grid.
        group: Number of groups G; C must be divisible by it.
        offset_scale: Scale applied to the base grid and the offsets.
        remove_center: Drop the kernel's centre point (odd k only), so P = k*k - 1.

    Returns:
        ``[N, Ho, Wo, G*D]`` with ``Ho = (H + 2*pad - (dilation*(k-1) + 1)) // stride + 1``.

    Raises:
        ValueError: Bad shapes or scalar arguments.
        TypeError: Dtype or device mismatch.
        RuntimeError: A forced backend is unavailable for this device.
    """
    geometry = DCNv3Geometry(
        kernel_size, stride, pad, dilation, group, float(offset_scale), bool(remove_center)
    )
    input, offset, mask = _autocast_inputs(input, offset, mask)
    validate_inputs(input, offset, mask, geometry)
    backend = resolve_backend(input.device)
    if backend == "reference":
        return dcnv3_reference(
            input, offset, mask, kernel_size=kernel_size, stride=stride, pad=pad,
            dilation=dilation, group=group, offset_scale=offset_scale,
            remove_center=remove_center,
        )
    return dcnv3_op(
        input, offset, mask, kernel_size, stride, pad, dilation, group, float(offset_scale),
        bool(remove_center), backend,
    )


def dcnv4(
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
    """DCNv4 deformable sampling (FlashInternImage), channels-last, as upstream defines it.

    It computes exactly what :func:`dcnv3` computes (same sampling positions, same point order,
    zero padding outside the image, weights used as given, no softmax), except that the offsets
    and point weights come in one packed tensor. With K = k*k - remove_center points per group
    and G groups, ``offset_mask`` has ``P = ceil(3*G*K / 8) * 8`` columns; group g owns columns
    ``[3Kg, 3K(g+1))``: column ``3Kg + 2p`` is the x offset of point p, ``3Kg + 2p + 1`` its y
    offset and ``3Kg + 2K + p`` its weight. Columns ``[3GK, P)`` are padding: never read, and
    their gradient is exactly zero.

    For output pixel (ho, wo), group g and point p at base position (bx, by) (x outer, y inner):

    ``x = wo*stride - pad + half + (bx + dx) * offset_scale`` (same for y with ho), and
    ``out[..., g*D + d] = sum_p w_p * bilinear(input[..., g*D + d], y, x)``,

    where ``half = dilation*(k-1)//2`` and bilinear() reads zero outside the image. Unlike
    upstream's CUDA extension, any kernel size and any group width work.

    Under ``torch.autocast`` both tensors are first cast to the autocast dtype (float64 tensors
    are left as they are). The backend is chosen as for :func:`dcnv3` (numba on CPU, Triton on
    CUDA, the reference elsewhere, or forced with :func:`internimage.ops.use_backend` or
    ``INTERNIMAGE_DCNV3_BACKEND``).

    Args:
        input: ``[N, H, W, G*D]`` features.
        offset_mask: ``[N, Ho, Wo, P]`` packed offsets and weights, as described above.
        kernel_size: Kernel side k (1 or more).
        stride: Output stride.
        pad: Zero padding on each side.
        dilation: Spacing of the base kernel grid.
        group: Number of groups G.
        group_channels: Channels per group D; ``group * group_channels`` must be C.
        offset_scale: Scale applied to the base grid and the offsets.
        remove_center: Drop the kernel's centre point (odd k only), so K = k*k - 1.

    Returns:
        ``[N, Ho, Wo, G*D]`` with ``Ho = (H + 2*pad - (dilation*(k-1) + 1)) // stride + 1``.

    Raises:
        ValueError: Bad shapes or scalar arguments (a wrong P names the expected one).
        TypeError: Dtype or device mismatch.
        RuntimeError: A forced backend is unavailable for this device.
    """
    geometry = dcnv4_geometry(
        kernel_size, stride, pad, dilation, group, float(offset_scale), bool(remove_center)
    )
    input, offset_mask = _autocast_inputs(input, offset_mask)
    validate_dcnv4_inputs(input, offset_mask, geometry, group_channels)
    backend = resolve_backend(input.device)
    if backend == "reference":
        return dcnv4_reference(
            input, offset_mask, kernel_size=kernel_size, stride=stride, pad=pad,
            dilation=dilation, group=group, group_channels=group_channels,
            offset_scale=offset_scale, remove_center=remove_center,
        )
    return dcnv4_op(
        input, offset_mask, kernel_size, stride, pad, dilation, group, group_channels,
        float(offset_scale), bool(remove_center), backend,
    )
