"""The public DCNv3 function: validates its arguments and dispatches to a backend."""

from __future__ import annotations

import torch

from internimage.ops.backends import resolve_backend
from internimage.ops.geometry import DCNv3Geometry, validate_inputs
from internimage.ops.reference import dcnv3_reference
from internimage.ops.registration import dcnv3_op

__all__ = ["dcnv3"]

#: Dtypes that autocast lowers; float64 is left alone, as autocast itself does.
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_inputs(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cast the three tensors to the autocast dtype when autocast is on for their device.

    Under CUDA autocast the module's linears give half-precision input and offsets while its
    softmax gives a float32 mask; like a convolution, the operator then runs in the autocast
    dtype (upstream casts the mask to the input dtype for the same reason).
    """
    if not all(isinstance(t, torch.Tensor) for t in (input, offset, mask)):
        return input, offset, mask  # validate_inputs names the culprit
    device_type = input.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return input, offset, mask
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(  # type: ignore[return-value]
        t.to(dtype) if t.dtype in _AUTOCAST_ELIGIBLE else t for t in (input, offset, mask)
    )


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
