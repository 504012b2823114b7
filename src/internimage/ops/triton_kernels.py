"""Triton kernels of the DCNv3 operator (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

They compute exactly what :func:`internimage.ops.dcnv3_reference` computes, without a build step and
without materialising the ``[N*G, D, Ho*Wo, P]`` tensor of sampled values.

Work split: one program owns a block of ``BLOCK_Q`` output pixels (flattened over ``N*Ho*Wo``, so
any batch size works) and one group's D channels, padded to the next power of two ``BLOCK_D`` and
masked. For each point it loads the pixels' offsets and mask once, computes the bilinear corners
in float32 (float64 for float64 inputs) and reads the four corners as ``[BLOCK_Q, BLOCK_D]`` tiles
of contiguous channels, so the loads vectorise and the point's weights are reused across channels.

Sampling rules, shared with the reference and the CPU kernels:

* A point at ``(x, y)`` is used when ``-1 <= x < W`` and ``-1 <= y < H``; outside that range all
  four corners are outside the image, so the point contributes nothing, and its offset and mask
  gradients are zero. The test runs on the floating-point coordinates before any conversion to
  integers, so NaN, +-inf or 1e30 offsets never produce an out-of-range index: NaN fails every
  comparison and such points are moved to a harmless in-range coordinate before ``floor``.
* A corner outside the image reads zero and receives no gradient (zero padding).
* A non-finite mask propagates into the output (``mask * 0``) as in the reference.

Backward: ``grad_input`` is scattered with float32 atomics (float64 for float64 inputs) into a
zero-initialised buffer that is cast to the input dtype at the end (half-precision atomics are slow
or missing before Hopper); ``grad_offset`` and ``grad_mask`` are reductions over the channels of
one (pixel, group, point), written without atomics. The atomics make ``grad_input`` reproducible
only up to float32 summation order.

DCNv4 runs the same kernels with ``PACKED``: its packed ``offset_mask`` is passed as both the offset
and the mask tensor and read in place, each group's K (dx, dy) pairs then K weights at column 3Kg of
a pixel's row of ``columns`` entries; the padding columns are never read or written.

Index arithmetic that scales with the tensor size runs in int64, so tensors over 2**31 elements
are addressed correctly.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from internimage.ops.geometry import DCNv3Geometry, dcnv4_columns

__all__ = ["LaunchConfig", "backward", "backward_dcnv4", "forward", "forward_dcnv4",
           "launch_config"]


# ----------------------------------------------------------------------------------- kernels


@triton.jit
def _pixel_frame(
    pid_q, num_pixels, out_width, out_pixels, stride, centre_shift,
    BLOCK_Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    """Flat pixel indices of this program's block, their batch index and kernel-centre position."""
    # int64 before any product with a channel count: N*Ho*Wo*C can exceed 2**31.
    q = pid_q.to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_valid = q < num_pixels
    n = q // out_pixels
    rem = q - n * out_pixels
    ho = rem // out_width
    wo = rem - ho * out_width
    # Same operation order as reference.sampling_coordinates: centre + (base + offset) * scale.
    centre_x = (wo * stride + centre_shift).to(COMPUTE)
    centre_y = (ho * stride + centre_shift).to(COMPUTE)
    return q, q_valid, n, centre_x, centre_y


@triton.jit
def _corners(x, y, height, width, point_valid):
    """Bilinear corner indices, fractional parts and validity of one point for a block of pixels.

    Returns ``(keep, x0, y0, fx, fy, in_x0, in_x1, in_y0, in_y1)``: ``keep`` is False for points
    that touch no pixel (including NaN/inf coordinates), whose corners are then all invalid.
    """
    # NaN fails every comparison, so non-finite coordinates are dropped here.
    keep = (x >= -1.0) & (x < width) & (y >= -1.0) & (y < height) & point_valid
    # Only in-range values reach floor() and the integer conversion.
    xs = tl.where(keep, x, -2.0)
    ys = tl.where(keep, y, -2.0)
    x0f = tl.floor(xs)
    y0f = tl.floor(ys)
    fx = xs - x0f
    fy = ys - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    in_x0 = keep & (x0 >= 0)
    in_x1 = keep & (x0 + 1 < width)
    in_y0 = keep & (y0 >= 0)
    in_y1 = keep & (y0 + 1 < height)
    return keep, x0, y0, fx, fy, in_x0, in_x1, in_y0, in_y1


@triton.jit
def _channel_mask(GROUP_CHANNELS: tl.constexpr, BLOCK_D: tl.constexpr):
    """``[1, BLOCK_D]`` mask of the real channels; all-true (foldable) when D is a power of two."""
    if GROUP_CHANNELS == BLOCK_D:
        dm = tl.full((1, BLOCK_D), 1, tl.int1)
    else:
        dm = (tl.arange(0, BLOCK_D) < GROUP_CHANNELS)[None, :]
    return dm


@triton.jit
def _point_coordinates(
    p, grid_ptr, offset_row, mask_row, centre_x, centre_y, q_valid, offset_scale,
    COMPUTE: tl.constexpr,
):
    """Sampling coordinates ``(x, y)`` and mask ``m`` of point ``p`` for a block of pixels."""
    # Base grid from DCNv3Geometry.kernel_grid(), (dx, dy) per point.
    base_x = tl.load(grid_ptr + 2 * p).to(COMPUTE)
    base_y = tl.load(grid_ptr + 2 * p + 1).to(COMPUTE)
    dx = tl.load(offset_row + 2 * p, mask=q_valid, other=0.0).to(COMPUTE)
    dy = tl.load(offset_row + 2 * p + 1, mask=q_valid, other=0.0).to(COMPUTE)
    m = tl.load(mask_row + p, mask=q_valid, other=0.0).to(COMPUTE)
    x = centre_x + (base_x + dx) * offset_scale
    y = centre_y + (base_y + dy) * offset_scale
    return x, y, m


@triton.jit
def _forward_point(
    p, acc, image, offset_row, mask_row, grid_ptr, centre_x, centre_y, q_valid,
    height, width, channels, offset_scale, ch, dm, COMPUTE: tl.constexpr,
):
    """Add point ``p``'s mask-weighted bilinear samples to ``acc`` ``[BLOCK_Q, BLOCK_D]``."""
    x, y, m = _point_coordinates(p, grid_ptr, offset_row, mask_row, centre_x, centre_y, q_valid,
                                 offset_scale, COMPUTE)
    keep, x0, y0, fx, fy, in_x0, in_x1, in_y0, in_y1 = _corners(x, y, height, width, q_valid)
    gx = 1.0 - fx
    gy = 1.0 - fy
    corner0 = ((y0.to(tl.int64) * width + x0) * channels)[:, None] + ch
    corner1 = corner0 + width * channels
    v00 = tl.load(image + corner0, mask=(in_y0 & in_x0)[:, None] & dm, other=0.0)
    v01 = tl.load(image + corner0 + channels, mask=(in_y0 & in_x1)[:, None] & dm, other=0.0)
    v10 = tl.load(image + corner1, mask=(in_y1 & in_x0)[:, None] & dm, other=0.0)
    v11 = tl.load(image + corner1 + channels, mask=(in_y1 & in_x1)[:, None] & dm, other=0.0)
    # Mask folded into the four weights: one multiply-add per corner and channel.
    w00 = (m * gy * gx)[:, None]
    w01 = (m * gy * fx)[:, None]
    w10 = (m * fy * gx)[:, None]
    w11 = (m * fy * fx)[:, None]
    acc += (
        w00 * v00.to(COMPUTE) + w01 * v01.to(COMPUTE)
        + w10 * v10.to(COMPUTE) + w11 * v11.to(COMPUTE)
    )
    return acc


@triton.jit
def _point_rows(q, g, groups, columns, POINTS: tl.constexpr, PACKED: tl.constexpr):
    """Index of point 0's dx and of its weight for group ``g`` of pixels ``q``, ``[BLOCK_Q]``.

    Point p's dx, dy and weight follow at ``+2p``, ``+2p + 1`` and ``+p``. DCNv3: offsets
    ``[N*Ho*Wo, G, K, 2]`` and mask ``[N*Ho*Wo, G, K]`` in two tensors. DCNv4 (``PACKED``): one
    ``[N*Ho*Wo, columns]`` tensor in which group g has its K (dx, dy) pairs at column 3Kg and
    its K weights right after them; the padding columns are never addressed.
    """
    if PACKED:
        offset_index = q * columns + g * (POINTS * 3)
        mask_index = offset_index + POINTS * 2
    else:
        offset_index = q * (groups * POINTS * 2) + g * (POINTS * 2)
        mask_index = q * (groups * POINTS) + g * POINTS
    return offset_index, mask_index


@triton.jit
def _dcnv3_forward_kernel(
    input_ptr, offset_ptr, mask_ptr, grid_ptr, out_ptr,
    num_pixels, height, width, channels, out_width, out_pixels, groups, columns,
    stride, centre_shift, offset_scale,
    GROUP_CHANNELS: tl.constexpr, POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr, UNROLL: tl.constexpr,
    PACKED: tl.constexpr,
):
    pid_q = tl.program_id(0)
    g = tl.program_id(1)
    q, q_valid, n, centre_x, centre_y = _pixel_frame(
        pid_q, num_pixels, out_width, out_pixels, stride, centre_shift, BLOCK_Q, COMPUTE
    )
    ch = tl.arange(0, BLOCK_D)[None, :]
    dm = _channel_mask(GROUP_CHANNELS, BLOCK_D)
    # [BLOCK_Q, 1]: this group's channels of each pixel's image in [N, H, W, G*D].
    image = input_ptr + (n * height * width * channels + g * GROUP_CHANNELS)[:, None]
    offset_index, mask_index = _point_rows(q, g, groups, columns, POINTS, PACKED)
    offset_row = offset_ptr + offset_index
    mask_row = mask_ptr + mask_index
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=COMPUTE)
    if UNROLL:
        # Unrolled: the gathers of all points can be in flight together.
        for p in tl.static_range(POINTS):
            acc = _forward_point(p, acc, image, offset_row, mask_row, grid_ptr, centre_x,
                                 centre_y, q_valid, height, width, channels, offset_scale, ch,
                                 dm, COMPUTE)
    else:
        for p in range(POINTS):
            acc = _forward_point(p, acc, image, offset_row, mask_row, grid_ptr, centre_x,
                                 centre_y, q_valid, height, width, channels, offset_scale, ch,
                                 dm, COMPUTE)
    out = out_ptr + (q * channels + g * GROUP_CHANNELS)[:, None] + ch
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=q_valid[:, None] & dm)


@triton.jit
def _backward_point(
    p, go, image, grad_image, offset_row, mask_row, grid_ptr, grad_offset_row, grad_mask_row,
    centre_x, centre_y, q_valid, height, width, channels, offset_scale, ch, dm,
    COMPUTE: tl.constexpr,
):
    """Gradients of point ``p``: offset and mask written, input scattered with atomics."""
    x, y, m = _point_coordinates(p, grid_ptr, offset_row, mask_row, centre_x, centre_y, q_valid,
                                 offset_scale, COMPUTE)
    keep, x0, y0, fx, fy, in_x0, in_x1, in_y0, in_y1 = _corners(x, y, height, width, q_valid)
    gx = 1.0 - fx
    gy = 1.0 - fy
    c00 = (in_y0 & in_x0)[:, None] & dm
    c01 = (in_y0 & in_x1)[:, None] & dm
    c10 = (in_y1 & in_x0)[:, None] & dm
    c11 = (in_y1 & in_x1)[:, None] & dm
    corner0 = ((y0.to(tl.int64) * width + x0) * channels)[:, None] + ch
    corner1 = corner0 + width * channels
    v00 = tl.load(image + corner0, mask=c00, other=0.0).to(COMPUTE)
    v01 = tl.load(image + corner0 + channels, mask=c01, other=0.0).to(COMPUTE)
    v10 = tl.load(image + corner1, mask=c10, other=0.0).to(COMPUTE)
    v11 = tl.load(image + corner1 + channels, mask=c11, other=0.0).to(COMPUTE)
    # Channel sums of grad_out times the corner values, [BLOCK_Q] each.
    s00 = tl.sum(go * v00, axis=1)
    s01 = tl.sum(go * v01, axis=1)
    s10 = tl.sum(go * v10, axis=1)
    s11 = tl.sum(go * v11, axis=1)
    grad_m = gy * (gx * s00 + fx * s01) + fy * (gx * s10 + fx * s11)
    ms = m * offset_scale
    grad_x = ms * (gy * (s01 - s00) + fy * (s11 - s10))
    grad_y = ms * (gx * (s10 - s00) + fx * (s11 - s01))
    # A skipped point gets exact zeros, also when its mask is not finite.
    grad_x = tl.where(keep, grad_x, 0.0)
    grad_y = tl.where(keep, grad_y, 0.0)
    grad_m = tl.where(keep, grad_m, 0.0)
    out_type = grad_offset_row.dtype.element_ty
    tl.store(grad_offset_row + 2 * p, grad_x.to(out_type), mask=q_valid)
    tl.store(grad_offset_row + 2 * p + 1, grad_y.to(out_type), mask=q_valid)
    tl.store(grad_mask_row + p, grad_m.to(out_type), mask=q_valid)
    # Scatter m * weight * grad_out into the four corners of the input gradient.
    mgo = go * m[:, None]
    tl.atomic_add(grad_image + corner0, mgo * (gy * gx)[:, None], mask=c00, sem="relaxed")
    tl.atomic_add(grad_image + corner0 + channels, mgo * (gy * fx)[:, None], mask=c01,
                  sem="relaxed")
    tl.atomic_add(grad_image + corner1, mgo * (fy * gx)[:, None], mask=c10, sem="relaxed")
    tl.atomic_add(grad_image + corner1 + channels, mgo * (fy * fx)[:, None], mask=c11,
                  sem="relaxed")


@triton.jit
def _dcnv3_backward_kernel(
    grad_out_ptr, input_ptr, offset_ptr, mask_ptr, grid_ptr,
    grad_input_ptr, grad_offset_ptr, grad_mask_ptr,
    num_pixels, height, width, channels, out_width, out_pixels, groups, columns,
    stride, centre_shift, offset_scale,
    GROUP_CHANNELS: tl.constexpr, POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr, UNROLL: tl.constexpr,
    PACKED: tl.constexpr,
):
    pid_q = tl.program_id(0)
    g = tl.program_id(1)
    q, q_valid, n, centre_x, centre_y = _pixel_frame(
        pid_q, num_pixels, out_width, out_pixels, stride, centre_shift, BLOCK_Q, COMPUTE
    )
    ch = tl.arange(0, BLOCK_D)[None, :]
    dm = _channel_mask(GROUP_CHANNELS, BLOCK_D)
    # [BLOCK_Q, 1]: this group's channels of each pixel's image.
    image_offset = (n * height * width * channels + g * GROUP_CHANNELS)[:, None]
    image = input_ptr + image_offset
    grad_image = grad_input_ptr + image_offset
    # The output gradient of this block is read once and reused by every point.
    go_ptrs = grad_out_ptr + (q * channels + g * GROUP_CHANNELS)[:, None] + ch
    go = tl.load(go_ptrs, mask=q_valid[:, None] & dm, other=0.0).to(COMPUTE)
    offset_index, mask_index = _point_rows(q, g, groups, columns, POINTS, PACKED)
    offset_row = offset_ptr + offset_index
    mask_row = mask_ptr + mask_index
    grad_offset_row = grad_offset_ptr + offset_index
    grad_mask_row = grad_mask_ptr + mask_index
    if UNROLL:
        for p in tl.static_range(POINTS):
            _backward_point(p, go, image, grad_image, offset_row, mask_row, grid_ptr,
                            grad_offset_row, grad_mask_row, centre_x, centre_y, q_valid, height,
                            width, channels, offset_scale, ch, dm, COMPUTE)
    else:
        for p in range(POINTS):
            _backward_point(p, go, image, grad_image, offset_row, mask_row, grid_ptr,
                            grad_offset_row, grad_mask_row, centre_x, centre_y, q_valid, height,
                            width, channels, offset_scale, ch, dm, COMPUTE)


# ------------------------------------------------------------------------------ launching


class LaunchConfig(NamedTuple):
    """Block sizes of one kernel launch."""

    #: Output pixels per program (a power of two).
    block_q: int
    #: Channels per program: the group's channels padded to a power of two.
    block_d: int
    #: Warps per program.
    num_warps: int
    #: Unroll the loop over the points (more loads in flight, longer compile).
    unroll: bool = True


def launch_config(
    group_channels: int, backward: bool, points: int = 9, dtype: torch.dtype = torch.float32
) -> LaunchConfig:
    """Block sizes for a group of ``group_channels`` channels and ``points`` sampling points.

    Chosen from the register use of the compiled kernels (sm_90): a forward program gathers a
    2 KiB ``[BLOCK_Q, BLOCK_D]`` tile per corner (1024 half-precision or 512 float32 values), so
    each thread of 4 warps issues one or two 16-byte loads per corner; with the 3x3 point loop
    unrolled that stays within 128-150 registers and lets all 36 gathers be in flight. The
    backward program keeps grad_out as well and does four vectorised float32 atomic adds per
    point, so it takes 512 values. Larger kernels and float64 keep a rolled loop to avoid spills.

    Args:
        group_channels: D, channels per group.
        backward: Whether the block is for the backward kernel.
        points: P, sampling points per group.
        dtype: Input dtype.

    Returns:
        The launch configuration.
    """
    block_d = triton.next_power_of_2(max(group_channels, 1))
    element_size = torch.finfo(dtype).bits // 8
    values = 512 if backward else max(512, 2048 // element_size)
    block_q = max(16, min(128, values // block_d))
    unroll = points <= 9 and dtype != torch.float64
    return LaunchConfig(block_q, block_d, 4, unroll)


def _compute_type(dtype: torch.dtype) -> tl.dtype:
    # Half types accumulate and compute coordinates in float32; float64 stays float64.
    return tl.float64 if dtype == torch.float64 else tl.float32


@functools.lru_cache(maxsize=64)
def _kernel_grid_tensor(
    grid: tuple[tuple[int, int], ...], device: torch.device
) -> torch.Tensor:
    # [P, 2] (dx, dy) base positions, cached per device so that steady-state calls (and CUDA-graph
    # replays) do no host-to-device copy.
    return torch.tensor(grid, dtype=torch.float32, device=device).reshape(-1, 2).contiguous()


def _device_grid(geometry: DCNv3Geometry, device: torch.device) -> torch.Tensor:
    return _kernel_grid_tensor(tuple(geometry.kernel_grid()), device)


def _check(name: str, tensor: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    # The op layer validates public calls; this guards direct calls against silent misreads.
    if tuple(tensor.shape) != shape or tensor.dtype != dtype:
        raise ValueError(
            f"dcnv3 triton: {name} must be a {dtype} tensor of shape {shape}, got "
            f"{tensor.dtype} {tuple(tensor.shape)}"
        )


def _device_scope(tensor: torch.Tensor) -> contextlib.AbstractContextManager[object]:
    # Triton launches on the current CUDA device; make it the tensors' device.
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _common_args(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geometry: DCNv3Geometry
) -> tuple[int, int, int, int, int, int]:
    n, h, w, c = input.shape
    if c % geometry.group != 0:
        raise ValueError(f"dcnv3 triton: channels {c} not divisible by group {geometry.group}")
    ho, wo = geometry.output_size(h, w)
    g, p = geometry.group, geometry.points
    _check("offset", offset, (n, ho, wo, g * p * 2), input.dtype)
    _check("mask", mask, (n, ho, wo, g * p), input.dtype)
    return n, h, w, c, ho, wo


def _packed_args(
    input: torch.Tensor, offset_mask: torch.Tensor, geometry: DCNv3Geometry
) -> int:
    """Check a DCNv4 call's tensors; returns the packed width P."""
    n, h, w, c = input.shape
    if c % geometry.group != 0:
        raise ValueError(f"dcnv4 triton: channels {c} not divisible by group {geometry.group}")
    ho, wo = geometry.output_size(h, w)
    columns = dcnv4_columns(geometry.group, geometry.points)
    _check("offset_mask", offset_mask, (n, ho, wo, columns), input.dtype)
    return columns


def _check_config(config: LaunchConfig, group_channels: int) -> None:
    if config.block_d < group_channels or config.block_d & (config.block_d - 1):
        raise ValueError(f"dcnv3 triton: block_d={config.block_d} must be a power of two >= "
                         f"the group's {group_channels} channels")
    if config.block_q < 1 or config.block_q & (config.block_q - 1):
        raise ValueError(f"dcnv3 triton: block_q={config.block_q} must be a power of two")


def forward(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    geometry: DCNv3Geometry,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """DCNv3 forward.

    Args:
        input: ``[N, H, W, G*D]``, contiguous, float16/bfloat16/float32/float64.
        offset: ``[N, Ho, Wo, G*P*2]``, (dx, dy) per point, same dtype.
        mask: ``[N, Ho, Wo, G*P]``, same dtype.
        geometry: The operator's scalar arguments.
        config: Launch configuration; default :func:`launch_config`.

    Returns:
        ``[N, Ho, Wo, G*D]`` in the dtype of ``input``.
    """
    # The kernels index dense NHWC memory; no copy when already contiguous.
    input, offset, mask = input.contiguous(), offset.contiguous(), mask.contiguous()
    _common_args(input, offset, mask, geometry)
    return _forward(input, offset, mask, geometry, config, 0)


def forward_dcnv4(
    input: torch.Tensor,
    offset_mask: torch.Tensor,
    geometry: DCNv3Geometry,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """DCNv4 forward: the DCNv3 kernel reading the packed ``offset_mask`` in place.

    Args:
        input: ``[N, H, W, G*D]``, contiguous, float16/bfloat16/float32/float64.
        offset_mask: ``[N, Ho, Wo, P]``, DCNv4's packed offsets and weights (see
            :mod:`internimage.ops.packing`), same dtype; the padding columns are never read.
        geometry: The operator's scalar arguments.
        config: Launch configuration; default :func:`launch_config`.

    Returns:
        ``[N, Ho, Wo, G*D]`` in the dtype of ``input``.
    """
    input, offset_mask = input.contiguous(), offset_mask.contiguous()
    columns = _packed_args(input, offset_mask, geometry)
    return _forward(input, offset_mask, offset_mask, geometry, config, columns)


def _forward(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geometry: DCNv3Geometry,
    config: LaunchConfig | None, columns: int,
) -> torch.Tensor:
    """Launch the forward kernel; ``columns`` > 0 selects DCNv4's packed layout."""
    n, h, w, c = input.shape
    ho, wo = geometry.output_size(h, w)
    out = torch.empty(n, ho, wo, c, dtype=input.dtype, device=input.device)
    if out.numel() == 0:
        return out
    d = c // geometry.group
    config = config or launch_config(d, False, geometry.points, input.dtype)
    _check_config(config, d)
    num_pixels = n * ho * wo
    launch = (triton.cdiv(num_pixels, config.block_q), geometry.group)
    with _device_scope(input):
        _dcnv3_forward_kernel[launch](
            input, offset, mask, _device_grid(geometry, input.device), out,
            num_pixels, h, w, c, wo, ho * wo, geometry.group, columns,
            geometry.stride, geometry.half - geometry.pad, float(geometry.offset_scale),
            GROUP_CHANNELS=d, POINTS=geometry.points, BLOCK_Q=config.block_q,
            BLOCK_D=config.block_d, COMPUTE=_compute_type(input.dtype),
            UNROLL=config.unroll, PACKED=columns > 0, num_warps=config.num_warps,
        )
    return out


def backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    geometry: DCNv3Geometry,
    config: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the DCNv3 forward with respect to input, offset and mask.

    Args:
        grad_output: ``[N, Ho, Wo, G*D]``, contiguous, dtype of ``input``.
        input: ``[N, H, W, G*D]``.
        offset: ``[N, Ho, Wo, G*P*2]``.
        mask: ``[N, Ho, Wo, G*P]``.
        geometry: The operator's scalar arguments.
        config: Launch configuration; default :func:`launch_config`.

    Returns:
        ``(grad_input, grad_offset, grad_mask)`` with the shapes and dtypes of the inputs.
    """
    input, offset, mask = input.contiguous(), offset.contiguous(), mask.contiguous()
    grad_output = grad_output.contiguous()
    n, h, w, c, ho, wo = _common_args(input, offset, mask, geometry)
    _check("grad_output", grad_output, (n, ho, wo, c), input.dtype)
    grad_offset = torch.zeros_like(offset)
    grad_mask = torch.zeros_like(mask)
    grad_input = _backward(grad_output, input, offset, mask, grad_offset, grad_mask, geometry,
                           config, 0)
    return grad_input, grad_offset, grad_mask


def backward_dcnv4(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    offset_mask: torch.Tensor,
    geometry: DCNv3Geometry,
    config: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the DCNv4 forward, reading and writing the packed layout in place.

    Args:
        grad_output: ``[N, Ho, Wo, G*D]``, contiguous, dtype of ``input``.
        input: ``[N, H, W, G*D]``.
        offset_mask: ``[N, Ho, Wo, P]``, DCNv4's packed offsets and weights.
        geometry: The operator's scalar arguments.
        config: Launch configuration; default :func:`launch_config`.

    Returns:
        ``(grad_input, grad_offset_mask)`` with the shapes and dtypes of the inputs; the padding
        columns of ``grad_offset_mask`` are exactly zero (the kernel never writes them).
    """
    input, offset_mask = input.contiguous(), offset_mask.contiguous()
    grad_output = grad_output.contiguous()
    columns = _packed_args(input, offset_mask, geometry)
    _check("grad_output", grad_output, (*offset_mask.shape[:3], input.shape[3]), input.dtype)
    grad_offset_mask = torch.zeros_like(offset_mask)
    grad_input = _backward(grad_output, input, offset_mask, offset_mask, grad_offset_mask,
                           grad_offset_mask, geometry, config, columns)
    return grad_input, grad_offset_mask


def _backward(
    grad_output: torch.Tensor, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
    grad_offset: torch.Tensor, grad_mask: torch.Tensor, geometry: DCNv3Geometry,
    config: LaunchConfig | None, columns: int,
) -> torch.Tensor:
    """Launch the backward kernel, which writes ``grad_offset`` and ``grad_mask`` (zero-filled,
    in the layout of ``offset`` and ``mask``); returns the input gradient."""
    n, h, w, c = input.shape
    ho, wo = geometry.output_size(h, w)
    # Atomics accumulate in float32 (float64 for float64 inputs), then one cast.
    accumulate = torch.float64 if input.dtype == torch.float64 else torch.float32
    grad_input = torch.zeros(n, h, w, c, dtype=accumulate, device=input.device)
    if n == 0 or c == 0:
        return grad_input.to(input.dtype)
    d = c // geometry.group
    config = config or launch_config(d, True, geometry.points, input.dtype)
    _check_config(config, d)
    num_pixels = n * ho * wo
    launch = (triton.cdiv(num_pixels, config.block_q), geometry.group)
    with _device_scope(input):
        _dcnv3_backward_kernel[launch](
            grad_output, input, offset, mask, _device_grid(geometry, input.device),
            grad_input, grad_offset, grad_mask,
            num_pixels, h, w, c, wo, ho * wo, geometry.group, columns,
            geometry.stride, geometry.half - geometry.pad, float(geometry.offset_scale),
            GROUP_CHANNELS=d, POINTS=geometry.points, BLOCK_Q=config.block_q,
            BLOCK_D=config.block_d, COMPUTE=_compute_type(input.dtype),
            UNROLL=config.unroll, PACKED=columns > 0, num_warps=config.num_warps,
        )
    return grad_input.to(input.dtype)
