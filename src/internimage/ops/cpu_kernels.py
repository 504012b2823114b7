"""CPU kernels of the DCNv3 operator, compiled by numba on first use.

The kernels compute exactly what :func:`internimage.ops.dcnv3_reference` computes, without a C
compiler and without materialising the ``[N, G, D, Ho*Wo, P]`` tensor of sampled values: each
output pixel sums its P points inside the kernel.

Layout: every tensor is used in its channels-last memory order, the input as ``[N, H, W, G, D]``.
The D channels of a group are contiguous; they are processed in blocks of ``LANES`` channels as
explicit LLVM vectors (numba intrinsics), the remaining ``D % LANES`` channels by scalar loops.

Sampling rules, shared with the reference:

* A sampling point at ``(x, y)`` is used when ``-1 <= x < W`` and ``-1 <= y < H``. Outside that
  range all four bilinear corners are outside the image, so the point contributes nothing to the
  output, its offset and mask gradients are zero, and it passes no gradient to the input. (At
  exactly ``x == -1`` the output contribution is zero too; the point is kept so that the offset
  gradient equals the reference's one-sided derivative there.)
* The range test is done on the floating-point coordinates *before* any conversion to integers,
  so offsets of any value (NaN, +-inf, +-1e30) never produce an out-of-bounds read or write: NaN
  fails every comparison and infinite or huge coordinates fall outside. A point with a non-finite
  coordinate therefore contributes zero and gets zero gradients, as in the reference.
* A corner outside the image reads zero and is never touched (zero padding).
* A non-finite mask value is propagated into the output as the reference does (``mask * 0``),
  even for a point outside the image.

Work split and memory:

* Forward: parallel over output rows ``(n, ho)``. A branch-free, vectorised pass computes the
  corners and mask-folded weights of the row's points into small per-row buffers; then each
  (pixel, group) sums its interior points in a register accumulator. Extra memory: a few
  kilobytes per row task.
* Backward part 1: parallel over output rows; offset and mask gradients from the dot products of
  the output gradient with the four corners. It records every point's top-left corner and
  weights (24 bytes per point, about 2.3x the output for D = 16, P = 9).
* Backward part 2: parallel over (image, chunk of groups); each task owns its slice of
  ``grad_input``, so the scatter needs no atomics and cannot race.

Precision and determinism: float32 inputs are computed in float32, float64 in float64, float16
and bfloat16 in float32 (converted with torch) and the results are rounded back to the input
dtype. Every value is summed in a fixed order that does not depend on the number of threads
(sums over channels add the vector lanes in a fixed tree), so repeated calls give
bitwise-identical results. No fast-math flag and no fused multiply-add is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from internimage.ops.geometry import DCNv3Geometry

__all__ = ["backward", "forward"]

# numba starts its own OpenMP pool at the first parallel launch, never at import; waiting
# passively keeps its idle workers from spinning against torch's pool (see internimage/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Compiled lazily on first call and cached on disk; never with fastmath=True (that would assume no
# NaN or inf). ``nogil`` lets other Python threads run while a kernel works.
_KERNEL_OPTIONS = {"parallel": True, "cache": True, "nogil": True}

# Point classes written by the coordinate pass.
_SKIP = 0  # outside (or non-finite): contributes nothing
_BORDER = 1  # some corners outside the image: checked corner by corner
_INTERIOR = 2  # all four corners inside: one fused loop over the channels

# ---------------------------------------------------------------------------------------------
# Channel blocks as explicit LLVM vectors. Numba cannot tell LLVM that the output and input
# arrays do not overlap, so its loop vectoriser either guards the short channel loops with runtime
# checks and then runs D = 16 through its scalar remainder, or gives up. These intrinsics load,
# combine and store LANES channels at once. They use plain IEEE operations (no fast-math flags,
# no fused multiply-add) in the same order as the scalar code, so a lane gives the same bits as
# the scalar loop would, and sums over lanes use a fixed tree.
# ---------------------------------------------------------------------------------------------
LANES = 16
# How many (pixel, group) sets of points ahead the forward pass prefetches input lines.
PREFETCH_GROUPS = 2
# The input-gradient scatter is split into at least this many tasks where the groups allow.
_MIN_SCATTER_TASKS = 8

_I32 = ir.IntType(32)


def _data_pointer(context: Any, builder: ir.IRBuilder, array_type: Any, array: Any,
                  index: ir.Value) -> ir.Value:
    """Pointer to ``array[index]`` of a 1-D contiguous array."""
    element = context.get_value_type(array_type.dtype)
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index], source_etype=element)


def _load_block(context: Any, builder: ir.IRBuilder, array_type: Any, array: Any,
                index: ir.Value) -> ir.Value:
    """``array[index:index + LANES]`` as one vector (unaligned load)."""
    element = context.get_value_type(array_type.dtype)
    pointer = _data_pointer(context, builder, array_type, array, index)
    vector = ir.VectorType(element, LANES)
    return builder.load(builder.bitcast(pointer, vector.as_pointer()),
                        align=array_type.dtype.bitwidth // 8, typ=vector)


def _store_block(context: Any, builder: ir.IRBuilder, array_type: Any, array: Any,
                 index: ir.Value, value: ir.Value) -> None:
    pointer = _data_pointer(context, builder, array_type, array, index)
    builder.store(value, builder.bitcast(pointer, value.type.as_pointer()),
                  align=array_type.dtype.bitwidth // 8)


def _load_scalar(context: Any, builder: ir.IRBuilder, array_type: Any, array: Any,
                 index: ir.Value) -> ir.Value:
    pointer = _data_pointer(context, builder, array_type, array, index)
    return builder.load(pointer, typ=context.get_value_type(array_type.dtype))


def _splat(builder: ir.IRBuilder, vector: ir.VectorType, scalar: ir.Value) -> ir.Value:
    """A vector with every lane equal to ``scalar``."""
    one_lane = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar,
                                      ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vector.count), [0] * vector.count)
    return builder.shuffle_vector(one_lane, one_lane, zeros)


def _shuffle(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, lanes: list[int]) -> ir.Value:
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(lanes)), lanes))


def _four_lane_sums(builder: ir.IRBuilder, vectors: list[ir.Value]) -> list[ir.Value]:
    """Lane sums of four LANES-wide vectors, by halving in a fixed order.

    Each level adds the low and high halves of every vector's remaining lanes; two vectors share
    one register from the first level on, so the four sums cost a handful of shuffles.
    """
    # Level 1: [v0 low + v0 high | v1 low + v1 high] and the same for v2, v3.
    half = LANES // 2
    low = list(range(half))
    pairs = []
    for a, b in ((vectors[0], vectors[1]), (vectors[2], vectors[3])):
        lows = _shuffle(builder, a, b, low + [LANES + i for i in low])
        highs = _shuffle(builder, a, b, [half + i for i in low] + [LANES + half + i for i in low])
        pairs.append(builder.fadd(lows, highs))
    # Level 2: both pairs into one vector of four groups (one per input) of half/2 lanes.
    width = half // 2
    groups = [(0, half), (half, half), (LANES, half), (LANES + half, half)]
    first = [start + i for start, _ in groups for i in range(width)]
    second = [start + width + i for start, _ in groups for i in range(width)]
    combined = builder.fadd(_shuffle(builder, pairs[0], pairs[1], first),
                            _shuffle(builder, pairs[0], pairs[1], second))
    # Further levels: halve every group of ``width`` lanes until one lane per input is left.
    while width > 1:
        width //= 2
        first = [g * 2 * width + i for g in range(4) for i in range(width)]
        second = [g * 2 * width + width + i for g in range(4) for i in range(width)]
        combined = builder.fadd(_shuffle(builder, combined, combined, first),
                                _shuffle(builder, combined, combined, second))
    return [builder.extract_element(combined, ir.Constant(_I32, i)) for i in range(4)]


@intrinsic
def _pixel_block(
    typingctx: Any, out: Any, out_base: Any, inp: Any, corner: Any, block: Any, w00: Any,
    w01: Any, w10: Any, w11: Any, selected: Any, count: Any, step_x: Any, step_y: Any,
) -> tuple[Any, Callable[..., Any]]:
    """``out[b:b+LANES] =`` the sum of the bilinear samples of points ``selected[:count]``.

    Every selected point has all four corners inside the image: ``corner[j] + block`` is the
    flat index of point j's top-left corner at this channel block; the weights include the mask.
    The accumulator starts from zero and stays in registers; points are added in order.
    """
    signature = types.void(out, out_base, inp, corner, block, w00, w01, w10, w11, selected,
                           count, step_x, step_y)

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        (out_v, base, inp_v, corner_v, block_v, a_v, b_v, c_v, e_v, selected_v, count_v, sx,
         sy) = args
        vector = ir.VectorType(context.get_value_type(inp.dtype), LANES)
        accumulator = cgutils.alloca_once_value(builder, ir.Constant(vector, None))
        with cgutils.for_range(builder, count_v) as loop:
            j = _load_scalar(context, builder, selected, selected_v, loop.index)
            top_left = builder.add(_load_scalar(context, builder, corner, corner_v, j), block_v)
            bottom_left = builder.add(top_left, sy)

            def term(weights: Any, weights_v: Any, index: ir.Value) -> ir.Value:
                weight = _load_scalar(context, builder, weights, weights_v, j)
                value = _load_block(context, builder, inp, inp_v, index)
                return builder.fmul(_splat(builder, vector, weight), value)

            upper = builder.fadd(term(w00, a_v, top_left),
                                 term(w01, b_v, builder.add(top_left, sx)))
            lower = builder.fadd(term(w10, c_v, bottom_left),
                                 term(w11, e_v, builder.add(bottom_left, sx)))
            builder.store(builder.fadd(builder.load(accumulator), builder.fadd(upper, lower)),
                          accumulator)
        _store_block(context, builder, out, out_v, base, builder.load(accumulator))
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _prefetch_corners(
    typingctx: Any, inp: Any, corner: Any, first: Any, count: Any, step_x: Any, step_y: Any
) -> tuple[Any, Callable[..., Any]]:
    """Ask the CPU to start loading the four corner lines of points ``first..first+count-1``."""
    signature = types.void(inp, corner, first, count, step_x, step_y)

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        inp_v, corner_v, first_v, count_v, sx, sy = args
        pointer_type = ir.PointerType(ir.IntType(8))
        prefetch = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [pointer_type, _I32, _I32, _I32]),
            "llvm.prefetch.p0",
        )
        read, locality, data = (ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                                ir.Constant(_I32, 1))
        with cgutils.for_range(builder, count_v) as loop:
            j = builder.add(first_v, loop.index)
            top_left = _load_scalar(context, builder, corner, corner_v, j)
            bottom_left = builder.add(top_left, sy)
            for index in (top_left, builder.add(top_left, sx), bottom_left,
                          builder.add(bottom_left, sx)):
                pointer = _data_pointer(context, builder, inp, inp_v, index)
                builder.call(prefetch, [builder.bitcast(pointer, pointer_type), read, locality,
                                        data])
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _scaled_add_block(
    typingctx: Any, dst: Any, dst_base: Any, src: Any, src_base: Any, weight: Any
) -> tuple[Any, Callable[..., Any]]:
    """``dst[b:b+LANES] += weight * src[s:s+LANES]``."""
    signature = types.void(dst, dst_base, src, src_base, weight)

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        dst_v, base, src_v, src_index, w = args
        value = _load_block(context, builder, src, src_v, src_index)
        total = builder.fadd(_load_block(context, builder, dst, dst_v, base),
                             builder.fmul(_splat(builder, value.type, w), value))
        _store_block(context, builder, dst, dst_v, base, total)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _dot_block(
    typingctx: Any, a: Any, a_base: Any, b: Any, b_base: Any
) -> tuple[Any, Callable[..., Any]]:
    """``sum(a[i:i+LANES] * b[j:j+LANES])`` with the lanes summed in a fixed order."""
    signature = a.dtype(a, a_base, b, b_base)

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        a_v, a_index, b_v, b_index = args
        product = builder.fmul(_load_block(context, builder, a, a_v, a_index),
                               _load_block(context, builder, b, b_v, b_index))
        zero = ir.Constant(product.type, None)
        return _four_lane_sums(builder, [product, zero, zero, zero])[0]

    return signature, codegen


@intrinsic
def _corner_dots_block(
    typingctx: Any, go: Any, go_base: Any, inp: Any, i00: Any, step_x: Any, step_y: Any
) -> tuple[Any, Callable[..., Any]]:
    """Dot products of ``go[g:g+LANES]`` with the four corner blocks at ``i00`` (all inside)."""
    signature = types.UniTuple(go.dtype, 4)(go, go_base, inp, i00, step_x, step_y)

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        go_v, g_index, inp_v, c00, sx, sy = args
        grad = _load_block(context, builder, go, go_v, g_index)
        c10 = builder.add(c00, sy)
        corners = [c00, builder.add(c00, sx), c10, builder.add(c10, sx)]
        products = [builder.fmul(grad, _load_block(context, builder, inp, inp_v, c))
                    for c in corners]
        return context.make_tuple(builder, sig.return_type,
                                  _four_lane_sums(builder, products))

    return signature, codegen


@intrinsic
def _scatter_block(
    typingctx: Any, grad_inp: Any, i00: Any, step_x: Any, step_y: Any, go: Any, go_base: Any,
    a00: Any, a01: Any, a10: Any, a11: Any,
) -> tuple[Any, Callable[..., Any]]:
    """``grad_inp[corner c, block] += a_c * go[g:g+LANES]`` for the four corners (all inside)."""
    signature = types.void(grad_inp, i00, step_x, step_y, go, go_base, a00, a01, a10, a11)

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        gi_v, c00, sx, sy, go_v, g_index, *weights = args
        grad = _load_block(context, builder, go, go_v, g_index)
        c10 = builder.add(c00, sy)
        corners = (c00, builder.add(c00, sx), c10, builder.add(c10, sx))
        for c, weight in zip(corners, weights, strict=True):
            total = builder.fadd(_load_block(context, builder, grad_inp, gi_v, c),
                                 builder.fmul(_splat(builder, grad.type, weight), grad))
            _store_block(context, builder, grad_inp, gi_v, c, total)
        return context.get_dummy_value()

    return signature, codegen


@njit(cache=True, nogil=True, inline="always")
def _point_coordinates(
    off: np.ndarray, msk: np.ndarray, off_base: int, msk_base: int, count: int,
    tab_x: np.ndarray, tab_base_x: np.ndarray, tab_base_y: np.ndarray, row_y: float,
    scale: float, zero: float, one: float, width: int, height: int, width_f: float,
    height_f: float, image: int, c_total: int, tab_group: np.ndarray,
    w00: np.ndarray, w01: np.ndarray, w10: np.ndarray, w11: np.ndarray,
    x0s: np.ndarray, y0s: np.ndarray, corner: np.ndarray, kind: np.ndarray,
) -> None:
    """Bilinear corners and mask-folded weights of ``count`` consecutive points of one output row.

    A branch-free loop over points, so it vectorises; the tables give each point's kernel-centre x
    and base grid position (same order as the offsets).
    """
    minus_one = -one
    # Unsigned indices throughout: numba then emits no negative-index wraparound, which would
    # keep LLVM from vectorising the loop.
    off_start = uint64(off_base)
    msk_start = uint64(msk_base)
    for j in range(uint64(count)):
        # Same operation order as reference.sampling_coordinates, so x and y are bitwise equal.
        x = tab_x[j] + (tab_base_x[j] + off[off_start + j + j]) * scale
        y = row_y + (tab_base_y[j] + off[off_start + j + j + uint64(1)]) * scale
        # NaN fails every comparison, so non-finite coordinates land in the skipped class.
        inside = (x >= minus_one) & (x < width_f) & (y >= minus_one) & (y < height_f)
        # Convert to integers only values known to be in range.
        x = x if inside else zero
        y = y if inside else zero
        x0f = np.floor(x)
        y0f = np.floor(y)
        fx = x - x0f
        fy = y - y0f
        m = msk[msk_start + j]
        top = m * (one - fy)
        bottom = m * fy
        w00[j] = top * (one - fx)
        w01[j] = top * fx
        w10[j] = bottom * (one - fx)
        w11[j] = bottom * fx
        x0 = np.int32(x0f)
        y0 = np.int32(y0f)
        x0s[j] = x0
        y0s[j] = y0
        interior = inside & (x0 >= 0) & (x0 < width - 1) & (y0 >= 0) & (y0 < height - 1)
        kind[j] = np.int32(inside) + np.int32(interior)
        # Flat index of the top-left corner at channel 0 of the point's group; other points get
        # the image's first pixel so that even a prefetch never points outside the input.
        corner[j] = ((image + (y0 if interior else 0)) * width + (x0 if interior else 0)) * (
            c_total
        ) + tab_group[j]


@njit(**_KERNEL_OPTIONS)
def _forward_kernel(
    inp: np.ndarray, off: np.ndarray, msk: np.ndarray, out: np.ndarray,
    batch: int, height: int, width: int, group: int, channels: int, out_h: int, out_w: int,
    points: int, row_y: np.ndarray, tab_x: np.ndarray, tab_base_x: np.ndarray,
    tab_base_y: np.ndarray, tab_group: np.ndarray, scale: float, zero: float, one: float,
    width_f: float, height_f: float,
) -> None:
    """Forward pass on flat arrays: input ``[N, H, W, G, D]``, output ``[N, Ho, Wo, G, D]``."""
    c_total = group * channels
    row_points = out_w * group * points
    length = uint64(channels)
    n_blocks = uint64(channels // LANES)
    blocked = n_blocks * uint64(LANES)
    step_x = uint64(c_total)
    step_y = uint64(width * c_total)
    points_u = uint64(points)
    for task in prange(batch * out_h):
        # One output row (n, ho) per task: first the coordinates of all its points, then the
        # sums over points, pixel by pixel and group by group.
        n = task // out_h
        ho = task - n * out_h
        w00 = np.empty(row_points, inp.dtype)
        w01 = np.empty(row_points, inp.dtype)
        w10 = np.empty(row_points, inp.dtype)
        w11 = np.empty(row_points, inp.dtype)
        x0s = np.empty(row_points, np.int32)
        y0s = np.empty(row_points, np.int32)
        corner = np.empty(row_points, np.int64)
        kind = np.empty(row_points, np.int32)
        msk_base = task * row_points
        image = n * height
        _point_coordinates(
            off, msk, 2 * msk_base, msk_base, row_points, tab_x, tab_base_x, tab_base_y,
            row_y[ho], scale, zero, one, width, height, width_f, height_f, image, c_total,
            tab_group, w00, w01, w10, w11, x0s, y0s, corner, kind,
        )
        selected = np.empty(points, np.uint64)
        for wo in range(out_w):
            for g in range(group):
                out_base = uint64(((task * out_w + wo) * group + g) * channels)
                first = uint64((wo * group + g) * points)
                ahead = first + uint64(PREFETCH_GROUPS) * points_u
                if ahead + points_u <= uint64(row_points):
                    _prefetch_corners(inp, corner, ahead, points_u, step_x, step_y)
                # Interior points first, summed in registers; this also initialises the output.
                count = uint64(0)
                for j in range(first, first + points_u):
                    selected[count] = j
                    count += uint64(kind[j] == _INTERIOR)
                for block in range(n_blocks):
                    d = block * uint64(LANES)
                    _pixel_block(out, out_base + d, inp, corner, d, w00, w01, w10, w11,
                                 selected, count, step_x, step_y)
                for d in range(blocked, length):
                    total = zero
                    for k in range(count):
                        j = selected[k]
                        i00 = uint64(corner[j]) + d
                        i10 = i00 + step_y
                        total += (w00[j] * inp[i00] + w01[j] * inp[i00 + step_x]) + (
                            w10[j] * inp[i10] + w11[j] * inp[i10 + step_x]
                        )
                    out[out_base + d] = total
                if count == points_u:
                    continue
                # Then the points with some or all corners outside, corner by corner.
                for j in range(first, first + points_u):
                    point_kind = kind[j]
                    if point_kind == _BORDER:
                        x0 = x0s[j]
                        y0 = y0s[j]
                        for k in range(4):
                            yy = y0 + k // 2
                            xx = x0 + k % 2
                            if yy < 0 or yy >= height or xx < 0 or xx >= width:
                                continue
                            if k == 0:
                                weight = w00[j]
                            elif k == 1:
                                weight = w01[j]
                            elif k == 2:
                                weight = w10[j]
                            else:
                                weight = w11[j]
                            src = uint64(((image + yy) * width + xx) * c_total + g * channels)
                            for block in range(n_blocks):
                                d = block * uint64(LANES)
                                _scaled_add_block(out, out_base + d, inp, src + d, weight)
                            for d in range(blocked, length):
                                out[out_base + d] += weight * inp[src + d]
                    elif point_kind == _SKIP:
                        m = msk[uint64(msk_base) + j]
                        if not np.isfinite(m):
                            # The reference multiplies the zero sample by the mask.
                            for d in range(length):
                                out[out_base + d] += m * zero


@njit(cache=True, nogil=True, inline="always")
def _row_fractions(
    off: np.ndarray, msk: np.ndarray, point_base: np.uint64, count: int, tab_x: np.ndarray,
    tab_base_x: np.ndarray, tab_base_y: np.ndarray, tab_group: np.ndarray, row_y: float,
    scale: float, zero: float, one: float, width: int, height: int, width_f: float,
    height_f: float, image_base: int, c_total: int, fxs: np.ndarray, fys: np.ndarray,
    ms: np.ndarray, corner: np.ndarray, kind: np.ndarray, x0_all: np.ndarray,
    y0_all: np.ndarray, w00_all: np.ndarray, w01_all: np.ndarray, w10_all: np.ndarray,
    w11_all: np.ndarray,
) -> None:
    """Backward coordinate pass over one output row (all groups), a branch-free loop.

    Keeps the fractions, mask, corner index and class of each point for this row, and stores
    each point's top-left corner (x0 = -2 for a skipped point) and mask-folded corner weights
    at ``point_base + j`` for the scatter kernel. Coordinates as in :func:`_point_coordinates`.
    """
    minus_one = -one
    for j in range(uint64(count)):
        idx = point_base + j
        x = tab_x[j] + (tab_base_x[j] + off[idx + idx]) * scale
        y = row_y + (tab_base_y[j] + off[idx + idx + uint64(1)]) * scale
        inside = (x >= minus_one) & (x < width_f) & (y >= minus_one) & (y < height_f)
        x = x if inside else zero
        y = y if inside else zero
        x0f = np.floor(x)
        y0f = np.floor(y)
        fx = x - x0f
        fy = y - y0f
        m = msk[idx]
        fxs[j] = fx
        fys[j] = fy
        ms[j] = m
        top = m * (one - fy)
        bottom = m * fy
        w00_all[idx] = top * (one - fx)
        w01_all[idx] = top * fx
        w10_all[idx] = bottom * (one - fx)
        w11_all[idx] = bottom * fx
        x0 = np.int32(x0f)
        y0 = np.int32(y0f)
        x0_all[idx] = x0 if inside else np.int32(-2)
        y0_all[idx] = y0
        interior = inside & (x0 >= 0) & (x0 < width - 1) & (y0 >= 0) & (y0 < height - 1)
        kind[j] = np.int32(inside) + np.int32(interior)
        # Non-interior points get the image's first pixel: even a prefetch stays in the input.
        corner[j] = image_base + ((y0 if interior else 0) * width + (x0 if interior else 0)) * (
            c_total
        ) + tab_group[j]


@njit(**_KERNEL_OPTIONS)
def _offset_mask_grad_kernel(
    grad_out: np.ndarray, inp: np.ndarray, off: np.ndarray, msk: np.ndarray,
    grad_off: np.ndarray, grad_msk: np.ndarray, x0_all: np.ndarray, y0_all: np.ndarray,
    w00_all: np.ndarray, w01_all: np.ndarray, w10_all: np.ndarray, w11_all: np.ndarray,
    batch: int, height: int, width: int, group: int, channels: int, out_h: int, out_w: int,
    points: int, row_y: np.ndarray, tab_x: np.ndarray, tab_base_x: np.ndarray,
    tab_base_y: np.ndarray, tab_group: np.ndarray, scale: float, zero: float, one: float,
    width_f: float, height_f: float,
) -> None:
    """Backward, part 1, parallel over output rows: offset and mask gradients of every point.

    Also records each point's corner and weights for :func:`_input_grad_kernel`.
    """
    c_total = group * channels
    row_points = out_w * group * points
    length = uint64(channels)
    n_blocks = uint64(channels // LANES)
    blocked = n_blocks * uint64(LANES)
    step_x = uint64(c_total)
    step_y = uint64(width * c_total)
    points_u = uint64(points)
    for task in prange(batch * out_h):
        n = task // out_h
        ho = task - n * out_h
        fxs = np.empty(row_points, inp.dtype)
        fys = np.empty(row_points, inp.dtype)
        ms = np.empty(row_points, inp.dtype)
        corner = np.empty(row_points, np.int64)
        kind = np.empty(row_points, np.int32)
        point_base = uint64(task * row_points)
        image = n * height
        _row_fractions(
            off, msk, point_base, row_points, tab_x, tab_base_x, tab_base_y, tab_group,
            row_y[ho], scale, zero, one, width, height, width_f, height_f,
            image * width * c_total, c_total, fxs, fys, ms, corner, kind, x0_all, y0_all,
            w00_all, w01_all, w10_all, w11_all,
        )
        for wo in range(out_w):
            for g in range(group):
                go_base = uint64(((task * out_w + wo) * group + g) * channels)
                first = uint64((wo * group + g) * points)
                ahead = first + uint64(PREFETCH_GROUPS) * points_u
                if ahead + points_u <= uint64(row_points):
                    _prefetch_corners(inp, corner, ahead, points_u, step_x, step_y)
                for j in range(first, first + points_u):
                    idx = point_base + j
                    ix = idx + idx
                    iy = ix + uint64(1)
                    point_kind = kind[j]
                    if point_kind == _SKIP:
                        grad_off[ix] = zero
                        grad_off[iy] = zero
                        grad_msk[idx] = zero
                        continue
                    s00 = zero
                    s01 = zero
                    s10 = zero
                    s11 = zero
                    if point_kind == _INTERIOR:
                        i00 = uint64(corner[j])
                        for block in range(n_blocks):
                            d = block * uint64(LANES)
                            p00, p01, p10, p11 = _corner_dots_block(
                                grad_out, go_base + d, inp, i00 + d, step_x, step_y
                            )
                            s00 += p00
                            s01 += p01
                            s10 += p10
                            s11 += p11
                        i01 = i00 + step_x
                        i10 = i00 + step_y
                        i11 = i10 + step_x
                        for d in range(blocked, length):
                            gd = grad_out[go_base + d]
                            s00 += gd * inp[i00 + d]
                            s01 += gd * inp[i01 + d]
                            s10 += gd * inp[i10 + d]
                            s11 += gd * inp[i11 + d]
                    else:
                        x0 = x0_all[idx]
                        y0 = y0_all[idx]
                        for k in range(4):
                            yy = y0 + k // 2
                            xx = x0 + k % 2
                            if yy < 0 or yy >= height or xx < 0 or xx >= width:
                                continue
                            src = uint64(((image + yy) * width + xx) * c_total + g * channels)
                            dot = zero
                            for block in range(n_blocks):
                                d = block * uint64(LANES)
                                dot += _dot_block(grad_out, go_base + d, inp, src + d)
                            for d in range(blocked, length):
                                dot += grad_out[go_base + d] * inp[src + d]
                            if k == 0:
                                s00 = dot
                            elif k == 1:
                                s01 = dot
                            elif k == 2:
                                s10 = dot
                            else:
                                s11 = dot
                    fx = fxs[j]
                    fy = fys[j]
                    gx = one - fx
                    gy = one - fy
                    grad_msk[idx] = gy * (gx * s00 + fx * s01) + fy * (gx * s10 + fx * s11)
                    ms_scale = ms[j] * scale
                    grad_off[ix] = ms_scale * (gy * (s01 - s00) + fy * (s11 - s10))
                    grad_off[iy] = ms_scale * (gx * (s10 - s00) + fx * (s11 - s01))


@njit(**_KERNEL_OPTIONS)
def _input_grad_kernel(
    grad_out: np.ndarray, grad_inp: np.ndarray, x0_all: np.ndarray, y0_all: np.ndarray,
    w00_all: np.ndarray, w01_all: np.ndarray, w10_all: np.ndarray, w11_all: np.ndarray,
    batch: int, height: int, width: int, group: int, channels: int, out_h: int, out_w: int,
    points: int, group_chunks: int,
) -> None:
    """Backward, part 2: scatter ``weight * grad_out`` into ``grad_inp`` (zero on entry).

    Parallel over (image n, chunk of groups): each task owns ``grad_inp[n, :, :, chunk, :]``, so
    no two tasks write the same element, and every element (which belongs to one group) receives
    its contributions in the order of the output pixels and points, whatever the chunking.
    """
    c_total = group * channels
    length = uint64(channels)
    n_blocks = uint64(channels // LANES)
    blocked = n_blocks * uint64(LANES)
    step_x = uint64(c_total)
    step_y = uint64(width * c_total)
    pixels = out_h * out_w
    chunk = (group + group_chunks - 1) // group_chunks
    for task in prange(batch * group_chunks):
        n = task // group_chunks
        g_start = (task - n * group_chunks) * chunk
        g_stop = min(g_start + chunk, group)
        image = n * height
        for q in range(pixels):
            pixel = n * pixels + q
            for g in range(g_start, g_stop):
                go_base = uint64((pixel * group + g) * channels)
                first = uint64((pixel * group + g) * points)
                for idx in range(first, first + uint64(points)):
                    x0 = x0_all[idx]
                    if x0 == -2:
                        continue
                    y0 = y0_all[idx]
                    if x0 >= 0 and x0 < width - 1 and y0 >= 0 and y0 < height - 1:
                        i00 = uint64(((image + y0) * width + x0) * c_total + g * channels)
                        a00 = w00_all[idx]
                        a01 = w01_all[idx]
                        a10 = w10_all[idx]
                        a11 = w11_all[idx]
                        for block in range(n_blocks):
                            d = block * uint64(LANES)
                            _scatter_block(grad_inp, i00 + d, step_x, step_y, grad_out, go_base + d,
                                           a00, a01, a10, a11)
                        i01 = i00 + step_x
                        i10 = i00 + step_y
                        i11 = i10 + step_x
                        for d in range(blocked, length):
                            gd = grad_out[go_base + d]
                            grad_inp[i00 + d] += a00 * gd
                            grad_inp[i01 + d] += a01 * gd
                            grad_inp[i10 + d] += a10 * gd
                            grad_inp[i11 + d] += a11 * gd
                        continue
                    for k in range(4):
                        yy = y0 + k // 2
                        xx = x0 + k % 2
                        if yy < 0 or yy >= height or xx < 0 or xx >= width:
                            continue
                        if k == 0:
                            weight = w00_all[idx]
                        elif k == 1:
                            weight = w01_all[idx]
                        elif k == 2:
                            weight = w10_all[idx]
                        else:
                            weight = w11_all[idx]
                        src = uint64(((image + yy) * width + xx) * c_total + g * channels)
                        for block in range(n_blocks):
                            d = block * uint64(LANES)
                            _scaled_add_block(grad_inp, src + d, grad_out, go_base + d, weight)
                        for d in range(blocked, length):
                            grad_inp[src + d] += weight * grad_out[go_base + d]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types have no numpy equivalent (bfloat16) or slow arithmetic: compute in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """1-D numpy view of a contiguous tensor in ``dtype`` (no copy when it already is)."""
    return tensor.detach().to(dtype).contiguous().view(-1).numpy()


class _Tables:
    """Per-call constants in the compute dtype: kernel-centre positions and the base grid."""

    def __init__(
        self, geometry: DCNv3Geometry, height: int, width: int, channels: int, out_h: int,
        out_w: int, np_dtype: type,
    ) -> None:
        shift = geometry.half - geometry.pad
        grid = np.asarray(geometry.kernel_grid(), dtype=np.float64).reshape(-1, 2)
        self.row_y = (np.arange(out_h) * geometry.stride + shift).astype(np_dtype)
        self.col_x = (np.arange(out_w) * geometry.stride + shift).astype(np_dtype)
        self.base_x = np.ascontiguousarray(grid[:, 0], dtype=np_dtype)
        self.base_y = np.ascontiguousarray(grid[:, 1], dtype=np_dtype)
        group = geometry.group
        points = geometry.points
        # Tables over one output row's points in offset order (wo, g, p).
        self.tab_x = np.repeat(self.col_x, group * points)
        self.tab_base_x = np.tile(self.base_x, out_w * group)
        self.tab_base_y = np.tile(self.base_y, out_w * group)
        self.tab_group = np.tile(np.repeat(np.arange(group, dtype=np.int64) * channels, points),
                                 out_w)
        self.scale = np_dtype(geometry.offset_scale)
        self.zero = np_dtype(0)
        self.one = np_dtype(1)
        self.width = np_dtype(width)
        self.height = np_dtype(height)


def forward(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geometry: DCNv3Geometry
) -> torch.Tensor:
    """DCNv3 forward on CPU tensors.

    Args:
        input: ``[N, H, W, G*D]``, contiguous.
        offset: ``[N, Ho, Wo, G*P*2]``, (dx, dy) per point.
        mask: ``[N, Ho, Wo, G*P]``.
        geometry: The operator's scalar arguments.

    Returns:
        ``[N, Ho, Wo, G*D]`` in the dtype of ``input``.
    """
    n, h, w, c = input.shape
    ho, wo = geometry.output_size(h, w)
    compute = _compute_dtype(input.dtype)
    out = torch.empty(n, ho, wo, c, dtype=compute)
    if out.numel() == 0:
        return out.to(input.dtype)
    group = geometry.group
    np_dtype = np.float64 if compute == torch.float64 else np.float32
    tables = _Tables(geometry, h, w, c // geometry.group, ho, wo, np_dtype)
    _forward_kernel(
        _flat(input, compute), _flat(offset, compute), _flat(mask, compute), out.view(-1).numpy(),
        n, h, w, group, c // group, ho, wo, geometry.points, tables.row_y, tables.tab_x,
        tables.tab_base_x, tables.tab_base_y, tables.tab_group, tables.scale, tables.zero,
        tables.one, tables.width, tables.height,
    )
    return out.to(input.dtype)


def backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    geometry: DCNv3Geometry,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the DCNv3 forward with respect to input, offset and mask.

    Args:
        grad_output: ``[N, Ho, Wo, G*D]``, contiguous.
        input: ``[N, H, W, G*D]``.
        offset: ``[N, Ho, Wo, G*P*2]``.
        mask: ``[N, Ho, Wo, G*P]``.
        geometry: The operator's scalar arguments.

    Returns:
        ``(grad_input, grad_offset, grad_mask)`` with the shapes and dtypes of the inputs.
    """
    n, h, w, c = input.shape
    ho, wo = geometry.output_size(h, w)
    compute = _compute_dtype(input.dtype)
    np_dtype = np.float64 if compute == torch.float64 else np.float32
    # Allocated by numpy (calloc: zero pages on first touch) rather than torch.zeros, whose
    # parallel fill would leave torch's thread pool spinning while the kernels run.
    grad_input = torch.from_numpy(np.zeros((n, h, w, c), np_dtype))
    if n == 0 or c == 0:
        return (grad_input.to(input.dtype), torch.zeros_like(offset), torch.zeros_like(mask))
    grad_offset = torch.empty(offset.shape, dtype=compute)
    grad_mask = torch.empty(mask.shape, dtype=compute)
    group = geometry.group
    tables = _Tables(geometry, h, w, c // geometry.group, ho, wo, np_dtype)
    grad_out_np = _flat(grad_output, compute)
    input_np = _flat(input, compute)
    # Per point: top-left corner and mask-folded weights, handed from part 1 to part 2
    # (24 bytes per point, about 2.3x the output for D = 16 and P = 9).
    count = offset.numel() // 2
    x0_all = np.empty(count, np.int32)
    y0_all = np.empty(count, np.int32)
    weights = [np.empty(count, np_dtype) for _ in range(4)]
    _offset_mask_grad_kernel(
        grad_out_np, input_np, _flat(offset, compute), _flat(mask, compute),
        grad_offset.view(-1).numpy(), grad_mask.view(-1).numpy(), x0_all, y0_all, *weights,
        n, h, w, group, c // group, ho, wo, geometry.points, tables.row_y, tables.tab_x,
        tables.tab_base_x, tables.tab_base_y, tables.tab_group, tables.scale, tables.zero,
        tables.one, tables.width, tables.height,
    )
    # Whole images per task keep each input line's groups together in cache; split the groups
    # only as far as needed for some parallelism on small batches.
    group_chunks = min(group, -(-_MIN_SCATTER_TASKS // n))
    _input_grad_kernel(
        grad_out_np, grad_input.view(-1).numpy(), x0_all, y0_all, *weights, n, h, w, group,
        c // group, ho, wo, geometry.points, group_chunks,
    )
    return (
        grad_input.to(input.dtype),
        grad_offset.to(offset.dtype),
        grad_mask.to(mask.dtype),
    )
