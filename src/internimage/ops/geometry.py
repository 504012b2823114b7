"""Geometry of the DCNv3 and DCNv4 operators: sampling grid, output size and input validation.

DCNv4 samples exactly as DCNv3 does, so both share :class:`DCNv3Geometry`. Every backend
(reference, numba, Triton) shares this module so that the sampling grid and the checks on user
input are defined once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["DCNv3Geometry", "dcnv4_columns", "dcnv4_geometry",
           "validate_dcnv4_inputs", "validate_inputs"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class DCNv3Geometry:
    """Scalar arguments of the DCNv3 operator.

    Attributes:
        kernel_size: Side of the square sampling kernel (k).
        stride: Output stride.
        pad: Zero padding added on every side of the input.
        dilation: Spacing of the base kernel grid.
        group: Number of channel groups G; each group has its own offsets and mask.
        offset_scale: Multiplies the base kernel grid and the learned offsets.
        remove_center: Drop the centre point of the kernel (odd kernel sizes only).
    """

    kernel_size: int
    stride: int = 1
    pad: int = 1
    dilation: int = 1
    group: int = 1
    offset_scale: float = 1.0
    remove_center: bool = False

    def __post_init__(self) -> None:
        for name in ("kernel_size", "stride", "dilation", "group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"dcnv3: {name} must be a positive integer, got {value!r}")
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            raise ValueError(f"dcnv3: pad must be a non-negative integer, got {self.pad!r}")
        if not math.isfinite(float(self.offset_scale)):
            raise ValueError(f"dcnv3: offset_scale must be finite, got {self.offset_scale!r}")
        if self.remove_center and self.kernel_size % 2 == 0:
            raise ValueError(
                f"dcnv3: remove_center needs an odd kernel_size (there is no centre point), "
                f"got kernel_size={self.kernel_size}"
            )
        if self.remove_center and self.kernel_size == 1:
            raise ValueError(
                "dcnv3: remove_center with kernel_size=1 leaves no sampling point; use "
                "kernel_size >= 3"
            )

    @property
    def points(self) -> int:
        """Number of sampling points P per group."""
        return self.kernel_size * self.kernel_size - int(self.remove_center)

    @property
    def half(self) -> int:
        """Offset of the kernel centre from its first point: dilation*(k-1)//2."""
        return self.dilation * (self.kernel_size - 1) // 2

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Output (Ho, Wo) for an input of (height, width); independent of offset_scale."""
        span = self.dilation * (self.kernel_size - 1) + 1
        return (
            (height + 2 * self.pad - span) // self.stride + 1,
            (width + 2 * self.pad - span) // self.stride + 1,
        )

    def kernel_grid(self) -> list[tuple[int, int]]:
        """Base (dx, dy) of each point in order, before offset_scale.

        Point p = i*k + j with i on the x axis (outer) and j on the y axis (inner), as upstream;
        with remove_center the centre is dropped and the others keep their order.
        """
        k, d, half = self.kernel_size, self.dilation, self.half
        grid = []
        for i in range(k):
            for j in range(k):
                if self.remove_center and i == k // 2 and j == k // 2:
                    continue
                grid.append((i * d - half, j * d - half))
        return grid


def validate_inputs(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geometry: DCNv3Geometry
) -> tuple[int, int]:
    """Check shapes, dtypes and devices of the operator's tensors.

    Args:
        input: ``[N, H, W, G*D]``.
        offset: ``[N, Ho, Wo, G*P*2]``.
        mask: ``[N, Ho, Wo, G*P]``.
        geometry: The operator's scalar arguments.

    Returns:
        The output size (Ho, Wo).

    Raises:
        ValueError: A shape does not fit the others or the geometry.
        TypeError: A dtype or device does not match.
    """
    for name, tensor in (("input", input), ("offset", offset), ("mask", mask)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"dcnv3: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(
                f"dcnv3: {name} must be 4-D channels-last [N, H, W, C], got shape "
                f"{tuple(tensor.shape)}"
            )
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"dcnv3: {name} has dtype {tensor.dtype}; supported: float16, bfloat16, "
                f"float32, float64"
            )
    if offset.dtype != input.dtype or mask.dtype != input.dtype:
        raise TypeError(
            f"dcnv3: dtype mismatch: input {input.dtype}, offset {offset.dtype}, mask {mask.dtype}"
        )
    if offset.device != input.device or mask.device != input.device:
        raise TypeError(
            f"dcnv3: device mismatch: input on {input.device}, offset on {offset.device}, "
            f"mask on {mask.device}"
        )
    n, h, w, c = input.shape
    g, p = geometry.group, geometry.points
    if c % g != 0:
        raise ValueError(f"dcnv3: input channels C={c} are not divisible by group={g}")
    ho, wo = geometry.output_size(h, w)
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"dcnv3: input of size {h}x{w} is too small for kernel_size={geometry.kernel_size}, "
            f"dilation={geometry.dilation}, pad={geometry.pad} (output would be {ho}x{wo})"
        )
    for name, tensor, channels in (("offset", offset, g * p * 2), ("mask", mask, g * p)):
        if tensor.shape[0] != n:
            raise ValueError(
                f"dcnv3: {name} batch {tensor.shape[0]} does not match input batch {n}"
            )
        if tuple(tensor.shape[1:3]) != (ho, wo):
            raise ValueError(
                f"dcnv3: {name} spatial size {tuple(tensor.shape[1:3])} is not the output size "
                f"{(ho, wo)} computed from input {h}x{w}, kernel_size={geometry.kernel_size}, "
                f"stride={geometry.stride}, pad={geometry.pad}, dilation={geometry.dilation}"
            )
        if tensor.shape[3] != channels:
            what = "group*points*2" if name == "offset" else "group*points"
            raise ValueError(
                f"dcnv3: {name} has {tensor.shape[3]} channels, expected {what} = {channels} "
                f"(group={g}, points={p})"
            )
    return ho, wo


def dcnv4_columns(group: int, points: int) -> int:
    """Columns P of DCNv4's packed ``offset_mask``: ``ceil(3*G*K / 8) * 8``.

    Upstream pads the packed layout to a multiple of 8 so that every pixel's row starts on an
    aligned address; the padding columns carry nothing.
    """
    return -(-3 * group * points // 8) * 8


def dcnv4_geometry(
    kernel_size: int, stride: int, pad: int, dilation: int, group: int, offset_scale: float,
    remove_center: bool,
) -> DCNv3Geometry:
    """The shared geometry of a DCNv4 call; its errors name the DCNv4 operator.

    Raises:
        ValueError: A scalar argument is out of range.
    """
    try:
        return DCNv3Geometry(kernel_size, stride, pad, dilation, group, offset_scale,
                             remove_center)
    except ValueError as error:
        raise ValueError(str(error).replace("dcnv3:", "dcnv4:", 1)) from None


def validate_dcnv4_inputs(
    input: torch.Tensor, offset_mask: torch.Tensor, geometry: DCNv3Geometry, group_channels: int
) -> tuple[int, int]:
    """Check the tensors of a DCNv4 call.

    Args:
        input: ``[N, H, W, G*D]``.
        offset_mask: ``[N, Ho, Wo, P]``, the packed offsets and weights (see
            :func:`dcnv4_columns`).
        geometry: The operator's scalar arguments (shared with DCNv3).
        group_channels: D, channels per group.

    Returns:
        The output size (Ho, Wo).

    Raises:
        ValueError: A shape does not fit the others or the geometry.
        TypeError: A dtype or device does not match.
    """
    if (isinstance(group_channels, bool) or not isinstance(group_channels, int)
            or group_channels <= 0):
        raise ValueError(
            f"dcnv4: group_channels must be a positive integer, got {group_channels!r}"
        )
    for name, tensor in (("input", input), ("offset_mask", offset_mask)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"dcnv4: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(
                f"dcnv4: {name} must be 4-D channels-last [N, H, W, C], got shape "
                f"{tuple(tensor.shape)}"
            )
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"dcnv4: {name} has dtype {tensor.dtype}; supported: float16, bfloat16, "
                f"float32, float64"
            )
    if offset_mask.dtype != input.dtype:
        raise TypeError(
            f"dcnv4: dtype mismatch: input {input.dtype}, offset_mask {offset_mask.dtype}"
        )
    if offset_mask.device != input.device:
        raise TypeError(
            f"dcnv4: device mismatch: input on {input.device}, offset_mask on "
            f"{offset_mask.device}"
        )
    n, h, w, c = input.shape
    g, k = geometry.group, geometry.points
    if g * group_channels != c:
        raise ValueError(
            f"dcnv4: input has {c} channels but group*group_channels = {g}*{group_channels} = "
            f"{g * group_channels}"
        )
    ho, wo = geometry.output_size(h, w)
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"dcnv4: input of size {h}x{w} is too small for kernel_size={geometry.kernel_size}, "
            f"dilation={geometry.dilation}, pad={geometry.pad} (output would be {ho}x{wo})"
        )
    if offset_mask.shape[0] != n:
        raise ValueError(
            f"dcnv4: offset_mask batch {offset_mask.shape[0]} does not match input batch {n}"
        )
    if tuple(offset_mask.shape[1:3]) != (ho, wo):
        raise ValueError(
            f"dcnv4: offset_mask spatial size {tuple(offset_mask.shape[1:3])} is not the output "
            f"size {(ho, wo)} computed from input {h}x{w}, kernel_size={geometry.kernel_size}, "
            f"stride={geometry.stride}, pad={geometry.pad}, dilation={geometry.dilation}"
        )
    columns = dcnv4_columns(g, k)
    if offset_mask.shape[3] != columns:
        raise ValueError(
            f"dcnv4: offset_mask has {offset_mask.shape[3]} columns; DCNv4 with group={g} and "
            f"{k} points needs P = ceil(3*{g}*{k}/8)*8 = {columns}"
        )
    return ho, wo
