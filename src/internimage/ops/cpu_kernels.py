"""CPU kernels of the DCNv3 operator, compiled by numba on first use.

The kernels compute exactly what :func:`internimage.ops.dcnv3_reference` computes, without a C
compiler and without materialising the ``[N, G, D, Ho*Wo, P]`` tensor of sampled values: each
output pixel sums its P points inside the kernel.

Layout: every tensor is used in its channels-last memory order, the input as ``[N, H, W, G, D]``.
DCNv4 (:func:`forward_dcnv4`, :func:`backward_dcnv4`) runs these same kernels on its packed
``offset_mask`` unpacked into DCNv3's offset and mask (a copy of the small per-point tensor, not of
the features). Kernels that read the packed layout in place, through per-row index tables, made
DCNv4's backward about a fifth faster but DCNv3's backward a few percent slower, so they are not
used.
The D channels of a group are contiguous; they are processed in blocks of ``LANES`` (16) channels
as explicit LLVM vectors (numba intrinsics), then one block of ``HALF_LANES`` (8) channels where at
least 8 remain (D = 8 in the small variants), and the last ``D % 8`` channels by scalar loops.

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
* A corner outside the image contributes nothing (zero padding). The kernels do not branch on
  it: the coordinate pass clamps it to the nearest column or row inside the image, which is
  always one of the same point's inside corners, and sets its weight to exactly zero. Every used
  point then takes the same vector path (no slower per-corner path for points near the border,
  which are most points on small maps), and no index ever leaves the input. For finite values
  this gives the reference's results: the clamped corner adds ``0 * value``, i.e. zero (a zero
  may differ in sign). A skipped point does not branch either: in the forward pass it reads a
  small block of zeros instead of the input, with weight ``mask * 0``. Non-finite input or
  output-gradient values: the clamped corner's dot product with the output gradient is
  discarded by a select rather than multiplied by zero, so the offset and mask gradients are
  exactly as if the corner were skipped; the scatter adds ``0 * grad_output`` to an element
  that the same point updates anyway. So the output and the input gradient have the same
  non-finite elements as the reference's, but an infinity may come out as NaN (``0 * inf`` at
  a clamped corner).
* A non-finite mask value is propagated into the output as the reference does (``mask * 0``),
  even for a point outside the image.

Work split and memory:

* Forward: parallel over output rows ``(n, ho)``. A branch-free, vectorised pass computes the
  clamped corners and mask-folded weights of the row's points into small per-row buffers, one
  record per point (its four weights in one buffer, its corner index, steps and validity bits
  in another, so that the block loop needs few pointers and spills no registers; the indices
  are int32, relative to the image, unless an image has 2**31 elements or more); then each
  (pixel, group) sums all its points in a register accumulator. Extra memory: a few tens of
  kilobytes per row task.
* Backward: one pass, parallel over (image, chunk of groups). Each task owns its slice of
  ``grad_input`` and the offset and mask gradients of its groups' points, so nothing can race
  and no atomics are needed. Row by row, the same coordinate pass fills per-row buffers; then
  each point loads its output-gradient block once, takes the dot products with its four corners
  (offset and mask gradients) and scatters its weighted gradient into the same corners. Nothing
  is stored per point between passes; the corner lines of points a few groups ahead are
  prefetched.

Precision and determinism: float32 inputs are computed in float32, float64 in float64, float16
and bfloat16 in float32 (converted with torch) and the results are rounded back to the input
dtype. Every value is summed in a fixed order that does not depend on the number of threads
(sums over channels add the vector lanes in a fixed tree), so repeated calls give
bitwise-identical results. No fast-math flag and no fused multiply-add is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from internimage.ops.geometry import DCNv3Geometry, dcnv4_columns
from internimage.ops.packing import pack_offset_mask, unpack_offset_mask
from internimage.ops.threads import match_torch_threads, size_numba_pool, start_numba_pool

size_numba_pool()  # before numba loads: its pool size is read at import

from llvmlite import ir  # noqa: E402
from numba import njit, prange, types, uint64  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

__all__ = ["backward", "backward_dcnv4", "forward", "forward_dcnv4"]

# numba's pool, started now with passive waiting (see internimage.ops.threads), so that the
# first launch does not start it with whatever the environment says then.
start_numba_pool()

# Compiled lazily on first call and cached on disk; never with fastmath=True (that would assume no
# NaN or inf). ``nogil`` lets other Python threads run while a kernel works.
_KERNEL_OPTIONS = {"parallel": True, "cache": True, "nogil": True}

# ---------------------------------------------------------------------------------------------
# Channel blocks as explicit LLVM vectors. Numba cannot tell LLVM that the output and input
# arrays do not overlap, so its loop vectoriser either guards the short channel loops with runtime
# checks and then runs D = 16 through its scalar remainder, or gives up. These intrinsics load,
# combine and store LANES channels at once. They use plain IEEE operations (no fast-math flags,
# no fused multiply-add) in the same order as the scalar code, so a lane gives the same bits as
# the scalar loop would, and sums over lanes use a fixed tree.
# ---------------------------------------------------------------------------------------------
LANES = 16
#: Width of the one narrower block after the full ones (the small variants have D = 8).
HALF_LANES = 8
# How many (pixel, group) sets of points ahead the kernels prefetch the corner lines.
PREFETCH_GROUPS = 2
# Point records use int32 indices for images of fewer elements than this, else int64.
_INT32_RECORDS_BELOW = 2**31
# The backward pass is split into at least this many tasks where the groups allow.
_MIN_BACKWARD_TASKS = 8

_I32 = ir.IntType(32)


def _data_pointer(context: Any, builder: ir.IRBuilder, array_type: Any, array: Any,
                  index: ir.Value) -> ir.Value:
    """Pointer to ``array[index]`` of a 1-D contiguous array."""
    element = context.get_value_type(array_type.dtype)
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index], source_etype=element)


def _load_block(context: Any, builder: ir.IRBuilder, array_type: Any, array: Any,
                index: ir.Value, lanes: int) -> ir.Value:
    """``array[index:index + lanes]`` as one vector (unaligned load)."""
    element = context.get_value_type(array_type.dtype)
    pointer = _data_pointer(context, builder, array_type, array, index)
    vector = ir.VectorType(element, lanes)
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


def _record_field(context: Any, builder: ir.IRBuilder, corners_type: Any, corners: Any,
                  record: ir.Value, k: int) -> ir.Value:
    """Field ``k`` of a point record, ``corners[record + k]``, widened to a signed 64-bit index.

    The records are int32 (or int64 for images of 2**31 elements or more, see ``_tables``).
    """
    index_type = context.get_value_type(types.uint64)
    value = _load_scalar(context, builder, corners_type, corners,
                         builder.add(record, ir.Constant(index_type, k)))
    return builder.sext(value, index_type) if corners_type.dtype.bitwidth < 64 else value


def _splat(builder: ir.IRBuilder, vector: ir.VectorType, scalar: ir.Value) -> ir.Value:
    """A vector with every lane equal to ``scalar``."""
    one_lane = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar,
                                      ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vector.count), [0] * vector.count)
    return builder.shuffle_vector(one_lane, one_lane, zeros)


def _shuffle(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, lanes: list[int]) -> ir.Value:
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(lanes)), lanes))


def _four_lane_sums(builder: ir.IRBuilder, vectors: list[ir.Value], lanes: int) -> list[ir.Value]:
    """Lane sums of four ``lanes``-wide vectors (8 or more), by halving in a fixed order.

    Each level adds the low and high halves of every vector's remaining lanes; two vectors share
    one register from the first level on, so the four sums cost a handful of shuffles.
    """
    # Level 1: [v0 low + v0 high | v1 low + v1 high] and the same for v2, v3.
    half = lanes // 2
    low = list(range(half))
    pairs = []
    for a, b in ((vectors[0], vectors[1]), (vectors[2], vectors[3])):
        lows = _shuffle(builder, a, b, low + [lanes + i for i in low])
        highs = _shuffle(builder, a, b, [half + i for i in low] + [lanes + half + i for i in low])
        pairs.append(builder.fadd(lows, highs))
    # Level 2: both pairs into one vector of four groups (one per input) of half/2 lanes.
    width = half // 2
    groups = [(0, half), (half, half), (lanes, half), (lanes + half, half)]
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


def _pixel_block_intrinsic(lanes: int) -> Any:
    """The forward block intrinsic for ``lanes`` channels (see ``_pixel_block`` below)."""

    @intrinsic
    def pixel_block(
        typingctx: Any, out: Any, out_base: Any, inp: Any, zeros: Any, corners: Any,
        weights: Any, block: Any, first: Any, count: Any, image_base: Any,
    ) -> tuple[Any, Callable[..., Any]]:
        """``out[b:b+lanes] =`` the sum of the bilinear samples of points ``first..+count``.

        Point j's record is ``corners[4j:4j+3]`` (top-left corner relative to ``image_base``,
        steps to the right and lower corners; all four corners inside the input, clamped, see
        :func:`_clamped_coordinates`) and ``weights[4j:4j+4]`` (mask-folded). A skipped point
        (corner index -1, steps 0) reads ``zeros`` instead of the input, so it adds
        ``weight * 0`` without a branch. The accumulator starts from zero and stays in
        registers; points are added in order.
        """
        signature = types.void(out, out_base, inp, zeros, corners, weights, block, first, count,
                               image_base)

        def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
            (out_v, base, inp_v, zeros_v, corners_v, weights_v, block_v, first_v, count_v,
             image_base_v) = args
            element = context.get_value_type(inp.dtype)
            vector = ir.VectorType(element, lanes)
            index_type = context.get_value_type(types.uint64)
            zeros_block = _data_pointer(context, builder, zeros, zeros_v, block_v)
            image_block = _data_pointer(context, builder, inp, inp_v,
                                        builder.add(image_base_v, block_v))
            accumulator = cgutils.alloca_once_value(builder, ir.Constant(vector, None))
            with cgutils.for_range(builder, count_v) as loop:
                record = builder.mul(builder.add(first_v, loop.index),
                                     ir.Constant(index_type, 4))
                corner = _record_field(context, builder, corners, corners_v, record, 0)
                skipped = builder.icmp_signed("<", corner, ir.Constant(index_type, 0))
                top_left = builder.select(
                    skipped, zeros_block, builder.gep(image_block, [corner], source_etype=element)
                )
                sx = _record_field(context, builder, corners, corners_v, record, 1)
                bottom_left = builder.gep(
                    top_left, [_record_field(context, builder, corners, corners_v, record, 2)],
                    source_etype=element,
                )

                def term(k: int, pointer: ir.Value) -> ir.Value:
                    value = builder.load(builder.bitcast(pointer, vector.as_pointer()),
                                         align=inp.dtype.bitwidth // 8, typ=vector)
                    weight = _load_scalar(context, builder, weights, weights_v,
                                          builder.add(record, ir.Constant(index_type, k)))
                    return builder.fmul(_splat(builder, vector, weight), value)

                upper = builder.fadd(
                    term(0, top_left), term(1, builder.gep(top_left, [sx], source_etype=element))
                )
                lower = builder.fadd(
                    term(2, bottom_left),
                    term(3, builder.gep(bottom_left, [sx], source_etype=element)),
                )
                total = builder.fadd(builder.load(accumulator), builder.fadd(upper, lower))
                builder.store(total, accumulator)
            _store_block(context, builder, out, out_v, base, builder.load(accumulator))
            return context.get_dummy_value()

        return signature, codegen

    return pixel_block


# ``_pixel_block[_half](out, out_base, inp, zeros, corners, weights, block, first, count,
# image_base)``: one block of LANES (HALF_LANES) channels of one output pixel and group.
_pixel_block = _pixel_block_intrinsic(LANES)
_pixel_block_half = _pixel_block_intrinsic(HALF_LANES)


def _prefetch_intrinsic(write: int) -> Any:
    """An intrinsic that prefetches the four corner lines of consecutive points of an array."""

    @intrinsic
    def prefetch_corners(
        typingctx: Any, array: Any, corners: Any, first: Any, count: Any, image_base: Any,
    ) -> tuple[Any, Callable[..., Any]]:
        signature = types.void(array, corners, first, count, image_base)

        def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
            array_v, corners_v, first_v, count_v, image_base_v = args
            index_type = context.get_value_type(types.uint64)
            pointer_type = ir.PointerType(ir.IntType(8))
            prefetch = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [pointer_type, _I32, _I32, _I32]),
                "llvm.prefetch.p0",
            )
            rw, locality, data = (ir.Constant(_I32, write), ir.Constant(_I32, 3),
                                  ir.Constant(_I32, 1))
            with cgutils.for_range(builder, count_v) as loop:
                record = builder.mul(builder.add(first_v, loop.index),
                                     ir.Constant(index_type, 4))

                def field(k: int) -> ir.Value:
                    return _record_field(context, builder, corners, corners_v, record, k)

                # A skipped point (index -1, steps 0) prefetches the image's first line.
                corner = field(0)
                skipped = builder.icmp_signed("<", corner, ir.Constant(index_type, 0))
                corner = builder.select(skipped, ir.Constant(index_type, 0), corner)
                top_left = builder.add(image_base_v, corner)
                sx = field(1)
                bottom_left = builder.add(top_left, field(2))
                for index in (top_left, builder.add(top_left, sx), bottom_left,
                              builder.add(bottom_left, sx)):
                    pointer = _data_pointer(context, builder, array, array_v, index)
                    builder.call(prefetch, [builder.bitcast(pointer, pointer_type), rw,
                                            locality, data])
            return context.get_dummy_value()

        return signature, codegen

    return prefetch_corners


# ``_prefetch_*(array, corners, first, count, image_base)``: ask the CPU to start loading the
# corner lines of points ``first..first+count-1`` of the image at ``image_base`` (clamped
# corners: every address is inside the array), for reading or for an update.
_prefetch_for_read = _prefetch_intrinsic(0)
_prefetch_for_update = _prefetch_intrinsic(1)


def _dots_and_scatter_intrinsic(lanes: int) -> Any:
    """The backward block intrinsic for ``lanes`` channels (see ``_dots_and_scatter_block``)."""

    @intrinsic
    def dots_and_scatter_block(
        typingctx: Any, go: Any, go_base: Any, inp: Any, grad_inp: Any, i00: Any, step_x: Any,
        step_y: Any, a00: Any, a01: Any, a10: Any, a11: Any,
    ) -> tuple[Any, Callable[..., Any]]:
        """One channel block of one point in the backward pass, with one load of ``go``.

        Returns the dot products of ``go[g:g+lanes]`` with the four corner blocks of ``inp``
        (corner c at ``i00 + {0, step_x, step_y, step_x + step_y}``, all inside the input) and
        adds ``a_c * go[g:g+lanes]`` to corner c of ``grad_inp``. The corners are updated one
        after the other (load, add, store), so corners that share an address (a clamped border
        point) still add up correctly.
        """
        signature = types.UniTuple(go.dtype, 4)(go, go_base, inp, grad_inp, i00, step_x, step_y,
                                                a00, a01, a10, a11)

        def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
            go_v, g_index, inp_v, gi_v, c00, sx, sy, *weights = args
            grad = _load_block(context, builder, go, go_v, g_index, lanes)
            c10 = builder.add(c00, sy)
            corners = (c00, builder.add(c00, sx), c10, builder.add(c10, sx))
            products = [builder.fmul(grad, _load_block(context, builder, inp, inp_v, c, lanes))
                        for c in corners]
            for c, weight in zip(corners, weights, strict=True):
                total = builder.fadd(_load_block(context, builder, grad_inp, gi_v, c, lanes),
                                     builder.fmul(_splat(builder, grad.type, weight), grad))
                _store_block(context, builder, grad_inp, gi_v, c, total)
            sums = _four_lane_sums(builder, products, lanes)
            return context.make_tuple(builder, sig.return_type, sums)

        return signature, codegen

    return dots_and_scatter_block


# ``_dots_and_scatter_block[_half](go, go_base, inp, grad_inp, i00, step_x, step_y, a00, a01,
# a10, a11)``: one block of LANES (HALF_LANES) channels of one point in the backward pass.
_dots_and_scatter_block = _dots_and_scatter_intrinsic(LANES)
_dots_and_scatter_block_half = _dots_and_scatter_intrinsic(HALF_LANES)


@njit(cache=True, nogil=True)
def _channel_blocks(channels: int) -> tuple[Any, Any, bool, Any]:
    """How a group's ``channels`` split into vector blocks, shared by both kernels.

    Returns ``(n_blocks, half_block, has_half, blocked)``: ``n_blocks`` LANES-wide blocks, then
    one HALF_LANES block at channel ``half_block`` when ``has_half`` (at least that many channels
    remain), and scalar channels from ``blocked`` on.
    """
    n_blocks = uint64(channels // LANES)
    half_block = n_blocks * uint64(LANES)
    has_half = uint64(channels) - half_block >= uint64(HALF_LANES)
    blocked = half_block + uint64(HALF_LANES) if has_half else half_block
    return n_blocks, half_block, has_half, blocked


@njit(cache=True, nogil=True)
def _clamped_coordinates(
    off: np.ndarray, msk: np.ndarray, point_base: np.uint64, table_base: np.uint64,
    local_base: np.uint64, count: int, tab_x: np.ndarray, tab_base_x: np.ndarray,
    tab_base_y: np.ndarray, tab_group: np.ndarray, row_y: float, scale: float, zero: float,
    one: float, width: int, height: int, width_f: float, height_f: float, c_total: int,
    fxs: np.ndarray, fys: np.ndarray, ms: np.ndarray, weights: np.ndarray, corners: np.ndarray,
    keep_fractions: bool,
) -> None:
    """Coordinates of ``count`` consecutive points of one output row, a branch-free loop.

    Reads points ``point_base + j`` of the offsets and mask and entries ``table_base + j`` of
    the tables (each point's kernel-centre x, base grid position and group channel offset, in
    offset order); writes the record of point ``k = local_base + j`` into the row buffers:

    * ``weights[4k:4k+4]``: the mask-folded weights of corners 00, 01, 10, 11;
    * ``corners[4k:4k+4]`` (int32, or int64 for huge images): the index of the clamped top-left
      corner at channel 0 of the point's group relative to the start of the image, the steps to
      the right and to the lower corners, and the ``valid`` bits of the four corners (bit c for
      corner c);
    * when ``keep_fractions`` (backward): ``fxs[k]``, ``fys[k]`` and ``ms[k]``, the fractions
      and the mask.

    A point's data sit together, so the block loops read them through two base pointers, and
    the int32 records halve the memory the row buffers pass through.

    Clamping: a corner outside the image is moved to the nearest column or row inside it, which
    is always one of the same point's inside corners (a used point has ``-1 <= x0 <= W - 1``),
    and its weight is exactly zero. So every used point takes the same vector path and no index
    ever leaves the input. A skipped point gets index -1, steps 0, no valid bits and the weights
    ``(mask * 0, 0, 0, 0)``: the forward reads a block of zeros for it, so it adds ``mask * 0``
    like the reference, with no branch.
    """
    minus_one = -one
    last_x = np.int32(width - 1)
    last_y = np.int32(height - 1)
    zero_i = np.int32(0)
    row_step = width * c_total
    for j in range(uint64(count)):
        idx = point_base + j
        t = table_base + j
        k = local_base + j
        r = k * uint64(4)
        # Same operation order as reference.sampling_coordinates, so x and y are bitwise equal.
        x = tab_x[t] + (tab_base_x[t] + off[idx + idx]) * scale
        y = row_y + (tab_base_y[t] + off[idx + idx + uint64(1)]) * scale
        # NaN fails every comparison, so non-finite coordinates land in the skipped class.
        inside = (x >= minus_one) & (x < width_f) & (y >= minus_one) & (y < height_f)
        # Convert to integers only values known to be in range.
        x = x if inside else zero
        y = y if inside else zero
        x0f = np.floor(x)
        y0f = np.floor(y)
        fx = x - x0f
        fy = y - y0f
        m = msk[idx]
        if keep_fractions:
            fxs[k] = fx
            fys[k] = fy
            ms[k] = m
        x0 = np.int32(x0f)
        y0 = np.int32(y0f)
        left = inside & (x0 >= zero_i)
        right = inside & (x0 < last_x)
        upper = y0 >= zero_i
        lower = y0 < last_y
        v00 = left & upper
        v01 = right & upper
        v10 = left & lower
        v11 = right & lower
        top = m * (one - fy)
        bottom = m * fy
        w00 = top * (one - fx) if v00 else zero
        weights[r] = w00 if inside else m * zero
        weights[r + uint64(1)] = top * fx if v01 else zero
        weights[r + uint64(2)] = bottom * (one - fx) if v10 else zero
        weights[r + uint64(3)] = bottom * fx if v11 else zero
        # Clamped corners: a used point has -1 <= x0 <= W - 1, so the left column is
        # max(x0, 0) and the right one is a column further exactly when 0 <= x0 < W - 1 (both
        # corners inside); otherwise both are the same column. The same for rows.
        cx0 = max(x0, zero_i)
        cy0 = max(y0, zero_i)
        # Computed in int64; storing into int32 records keeps the low bits, which lets LLVM do
        # the arithmetic in 32 bits (_tables() picks int32 only where every index fits).
        corner = (cy0 * width + cx0) * c_total + tab_group[t]
        corners[r] = corner if inside else -1
        corners[r + uint64(1)] = c_total if left & right else 0
        corners[r + uint64(2)] = row_step if inside & upper & lower else 0
        corners[r + uint64(3)] = np.int64(v00) | (np.int64(v01) << 1) | (
            np.int64(v10) << 2) | (np.int64(v11) << 3)


@njit(cache=True, nogil=True)
def _forward_scalar_channels(
    inp: np.ndarray, corners: np.ndarray, weights: np.ndarray, out: np.ndarray,
    out_base: np.uint64, image_base: np.uint64, first: np.uint64, count: np.uint64,
    start: np.uint64, stop: np.uint64, zero: float,
) -> None:
    """Channels ``start..stop-1`` of one (pixel, group), one scalar sum per channel."""
    for d in range(start, stop):
        total = zero
        for j in range(first, first + count):
            r = j * uint64(4)
            v00 = zero
            v01 = zero
            v10 = zero
            v11 = zero
            if corners[r] >= 0:
                i00 = image_base + uint64(corners[r]) + d
                i01 = i00 + uint64(corners[r + uint64(1)])
                i10 = i00 + uint64(corners[r + uint64(2)])
                i11 = i01 + uint64(corners[r + uint64(2)])
                v00 = inp[i00]
                v01 = inp[i01]
                v10 = inp[i10]
                v11 = inp[i11]
            total += (weights[r] * v00 + weights[r + uint64(1)] * v01) + (
                weights[r + uint64(2)] * v10 + weights[r + uint64(3)] * v11
            )
        out[out_base + d] = total


@njit(**_KERNEL_OPTIONS)
def _forward_kernel(
    inp: np.ndarray, off: np.ndarray, msk: np.ndarray, out: np.ndarray, corners_like: np.ndarray,
    batch: int, height: int, width: int, group: int, channels: int, out_h: int, out_w: int,
    points: int, row_y: np.ndarray, tab_x: np.ndarray, tab_base_x: np.ndarray,
    tab_base_y: np.ndarray, tab_group: np.ndarray, scale: float, zero: float, one: float,
    width_f: float, height_f: float,
) -> None:
    """Forward pass on flat arrays: input ``[N, H, W, G, D]``, output ``[N, Ho, Wo, G, D]``.

    ``corners_like`` only sets the integer type of the point records (int32 or int64).
    """
    c_total = group * channels
    row_points = uint64(out_w * group * points)
    length = uint64(channels)
    n_blocks, half_block, has_half, blocked = _channel_blocks(channels)
    points_u = uint64(points)
    channels_u = uint64(channels)
    for task in prange(batch * out_h):
        # One output row (n, ho) per task: first the coordinates of all its points, then the
        # sums over points, (pixel, group) by (pixel, group) in memory order.
        n = task // out_h
        ho = task - n * out_h
        # The fractions and mask are only kept for the backward pass: one-element placeholders.
        fxs = np.empty(1, inp.dtype)
        fys = np.empty(1, inp.dtype)
        ms = np.empty(1, inp.dtype)
        weights = np.empty(row_points * uint64(4), inp.dtype)
        corners = np.empty(row_points * uint64(4), corners_like.dtype)
        # What skipped points read instead of the input.
        zeros = np.zeros(max(channels, 1), inp.dtype)
        msk_base = uint64(task) * row_points
        image_base = uint64(n * height * width * c_total)
        _clamped_coordinates(
            off, msk, msk_base, uint64(0), uint64(0), row_points, tab_x, tab_base_x,
            tab_base_y, tab_group, row_y[ho], scale, zero, one, width, height, width_f,
            height_f, c_total, fxs, fys, ms, weights, corners, False,
        )
        out_row = uint64(task) * uint64(out_w * c_total)
        # ``first``: the first point of one (pixel, group), whose output block starts at
        # out_base; the records and the output are in the same (wo, g) order.
        for first in range(uint64(0), row_points, points_u):
            out_base = out_row + first // points_u * channels_u
            ahead = first + uint64(PREFETCH_GROUPS) * points_u
            if ahead + points_u <= row_points:
                _prefetch_for_read(inp, corners, ahead, points_u, image_base)
            # Every point summed in registers, in order; this also initialises the output.
            for block in range(n_blocks):
                d = block * uint64(LANES)
                _pixel_block(out, out_base + d, inp, zeros, corners, weights, d, first,
                             points_u, image_base)
            if has_half:
                _pixel_block_half(out, out_base + half_block, inp, zeros, corners, weights,
                                  half_block, first, points_u, image_base)
            # The last D % 8 channels, in a separate function: inlined here, their loops made
            # the block loops above measurably slower even when they run zero times.
            if blocked < length:
                _forward_scalar_channels(inp, corners, weights, out, out_base, image_base, first,
                                         points_u, blocked, length, zero)


@njit(**_KERNEL_OPTIONS)
def _backward_kernel(
    grad_out: np.ndarray, inp: np.ndarray, off: np.ndarray, msk: np.ndarray,
    grad_inp: np.ndarray, grad_off: np.ndarray, grad_msk: np.ndarray, corners_like: np.ndarray,
    batch: int, height: int, width: int, group: int, channels: int, out_h: int, out_w: int,
    points: int, group_chunks: int, row_y: np.ndarray, tab_x: np.ndarray,
    tab_base_x: np.ndarray, tab_base_y: np.ndarray, tab_group: np.ndarray, scale: float,
    zero: float, one: float, width_f: float, height_f: float,
) -> None:
    """Backward in one pass, parallel over (image n, chunk of groups); ``grad_inp`` zero on entry.

    Each task owns ``grad_inp[n, :, :, chunk, :]`` and the offset and mask gradients of its
    groups' points, so no two tasks write the same element. Row by row, a coordinate pass fills
    small per-row buffers; then each point loads its output-gradient block once, takes the dot
    products with its four corners (for the offset and mask gradients) and scatters its weighted
    gradient into the same corners. Every ``grad_inp`` element (which belongs to one group)
    receives its contributions in the order of output pixels and points, whatever the chunking.
    """
    c_total = group * channels
    length = uint64(channels)
    n_blocks, half_block, has_half, blocked = _channel_blocks(channels)
    points_u = uint64(points)
    chunk = (group + group_chunks - 1) // group_chunks
    for task in prange(batch * group_chunks):
        n = task // group_chunks
        g_start = (task - n * group_chunks) * chunk
        g_stop = min(g_start + chunk, group)
        span = uint64(max(g_stop - g_start, 0)) * points_u
        row_points = uint64(out_w) * span
        fxs = np.empty(row_points, inp.dtype)
        fys = np.empty(row_points, inp.dtype)
        ms = np.empty(row_points, inp.dtype)
        weights = np.empty(row_points * uint64(4), inp.dtype)
        corners = np.empty(row_points * uint64(4), corners_like.dtype)
        image_base = uint64(n * height * width * c_total)
        all_groups = span == uint64(group) * points_u
        segments = 1 if all_groups else out_w
        segment_points = row_points if all_groups else span
        for ho in range(out_h):
            row = n * out_h + ho
            row_start = uint64(row * out_w * group * points)
            # One coordinate pass per contiguous run of the task's points: the whole row when
            # the task has every group (one long vectorised loop), else one run per pixel.
            for segment in range(segments):
                table = uint64(segment * group * points + g_start * points)
                _clamped_coordinates(
                    off, msk, row_start + table, table, uint64(segment) * segment_points,
                    segment_points, tab_x, tab_base_x, tab_base_y, tab_group, row_y[ho], scale,
                    zero, one, width, height, width_f, height_f, c_total, fxs, fys, ms, weights,
                    corners, True,
                )
            for wo in range(out_w):
                pixel = row * out_w + wo
                for g in range(g_start, g_stop):
                    go_base = uint64((pixel * group + g) * channels)
                    first = uint64(wo) * span + uint64(g - g_start) * points_u
                    point_base = uint64((pixel * group + g) * points)
                    ahead = first + uint64(PREFETCH_GROUPS) * points_u
                    if ahead + points_u <= row_points:
                        _prefetch_for_read(inp, corners, ahead, points_u, image_base)
                        _prefetch_for_update(grad_inp, corners, ahead, points_u, image_base)
                    for p in range(points_u):
                        j = first + p
                        idx = point_base + p
                        ix = idx + idx
                        iy = ix + uint64(1)
                        r = j * uint64(4)
                        bits = corners[r + uint64(3)]
                        if bits == 0:
                            grad_off[ix] = zero
                            grad_off[iy] = zero
                            grad_msk[idx] = zero
                            continue
                        i00 = image_base + uint64(corners[r])
                        sx = uint64(corners[r + uint64(1)])
                        sy = uint64(corners[r + uint64(2)])
                        a00 = weights[r]
                        a01 = weights[r + uint64(1)]
                        a10 = weights[r + uint64(2)]
                        a11 = weights[r + uint64(3)]
                        s00 = zero
                        s01 = zero
                        s10 = zero
                        s11 = zero
                        for block in range(n_blocks):
                            d = block * uint64(LANES)
                            p00, p01, p10, p11 = _dots_and_scatter_block(
                                grad_out, go_base + d, inp, grad_inp, i00 + d, sx, sy, a00, a01,
                                a10, a11,
                            )
                            s00 += p00
                            s01 += p01
                            s10 += p10
                            s11 += p11
                        if has_half:
                            p00, p01, p10, p11 = _dots_and_scatter_block_half(
                                grad_out, go_base + half_block, inp, grad_inp, i00 + half_block,
                                sx, sy, a00, a01, a10, a11,
                            )
                            s00 += p00
                            s01 += p01
                            s10 += p10
                            s11 += p11
                        i01 = i00 + sx
                        i10 = i00 + sy
                        i11 = i10 + sx
                        for d in range(blocked, length):
                            gd = grad_out[go_base + d]
                            s00 += gd * inp[i00 + d]
                            s01 += gd * inp[i01 + d]
                            s10 += gd * inp[i10 + d]
                            s11 += gd * inp[i11 + d]
                            grad_inp[i00 + d] += a00 * gd
                            grad_inp[i01 + d] += a01 * gd
                            grad_inp[i10 + d] += a10 * gd
                            grad_inp[i11 + d] += a11 * gd
                        # A clamped corner's dot product is with a neighbour's values: drop it
                        # (a select, so even an infinite input there leaves exactly zero).
                        if bits != 15:
                            s00 = s00 if bits & 1 else zero
                            s01 = s01 if bits & 2 else zero
                            s10 = s10 if bits & 4 else zero
                            s11 = s11 if bits & 8 else zero
                        fx = fxs[j]
                        fy = fys[j]
                        gx = one - fx
                        gy = one - fy
                        grad_msk[idx] = gy * (gx * s00 + fx * s01) + fy * (gx * s10 + fx * s11)
                        ms_scale = ms[j] * scale
                        grad_off[ix] = ms_scale * (gy * (s01 - s00) + fy * (s11 - s10))
                        grad_off[iy] = ms_scale * (gx * (s10 - s00) + fx * (s11 - s01))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types have no numpy equivalent (bfloat16) or slow arithmetic: compute in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """1-D numpy view of a contiguous tensor in ``dtype`` (no copy when it already is)."""
    return tensor.detach().to(dtype).contiguous().view(-1).numpy()


class _Tables:
    """Constants of one call shape: kernel-centre positions and the base grid in the compute
    dtype, and ``corners_like``, an empty array of the point records' integer type.

    Built once per shape (see :func:`_tables`); the kernels only read them.
    """

    def __init__(
        self, geometry: DCNv3Geometry, height: int, width: int, channels: int, out_h: int,
        out_w: int, np_dtype: type, index_dtype: type,
    ) -> None:
        self.corners_like = np.empty(0, index_dtype)
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
        self.tab_group = np.tile(
            np.repeat(np.arange(group, dtype=index_dtype) * channels, points), out_w
        )
        self.scale = np_dtype(geometry.offset_scale)
        self.zero = np_dtype(0)
        self.one = np_dtype(1)
        self.width = np_dtype(width)
        self.height = np_dtype(height)


@functools.lru_cache(maxsize=64)
def _cached_tables(
    geometry: DCNv3Geometry, height: int, width: int, channels: int, out_h: int, out_w: int,
    np_dtype: type, index_dtype: type,
) -> _Tables:
    return _Tables(geometry, height, width, channels, out_h, out_w, np_dtype, index_dtype)


def _tables(
    geometry: DCNv3Geometry, height: int, width: int, channels: int, out_h: int, out_w: int,
    np_dtype: type,
) -> _Tables:
    """The tables of a call; the records are int32 where every index into one image fits.

    Cached: building them costs tens of microseconds, a noticeable share of a call on small
    maps.
    """
    image_size = height * width * channels * geometry.group
    index_dtype = np.int32 if image_size < _INT32_RECORDS_BELOW else np.int64
    return _cached_tables(geometry, height, width, channels, out_h, out_w, np_dtype, index_dtype)


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
    tables = _tables(geometry, h, w, c // geometry.group, ho, wo, np_dtype)
    match_torch_threads()
    _forward_kernel(
        _flat(input, compute), _flat(offset, compute), _flat(mask, compute), out.view(-1).numpy(),
        tables.corners_like, n, h, w, group, c // group, ho, wo, geometry.points, tables.row_y,
        tables.tab_x, tables.tab_base_x, tables.tab_base_y, tables.tab_group, tables.scale,
        tables.zero, tables.one, tables.width, tables.height,
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
    tables = _tables(geometry, h, w, c // geometry.group, ho, wo, np_dtype)
    # Whole images per task keep each input line's groups together in cache; split the groups
    # only as far as needed for some parallelism on small batches.
    group_chunks = min(group, -(-_MIN_BACKWARD_TASKS // n))
    match_torch_threads()
    _backward_kernel(
        _flat(grad_output, compute), _flat(input, compute), _flat(offset, compute),
        _flat(mask, compute), grad_input.view(-1).numpy(), grad_offset.view(-1).numpy(),
        grad_mask.view(-1).numpy(), tables.corners_like, n, h, w, group, c // group, ho, wo,
        geometry.points, group_chunks, tables.row_y, tables.tab_x, tables.tab_base_x,
        tables.tab_base_y, tables.tab_group, tables.scale, tables.zero, tables.one, tables.width,
        tables.height,
    )
    return (
        grad_input.to(input.dtype),
        grad_offset.to(offset.dtype),
        grad_mask.to(mask.dtype),
    )


def forward_dcnv4(
    input: torch.Tensor, offset_mask: torch.Tensor, geometry: DCNv3Geometry
) -> torch.Tensor:
    """DCNv4 forward on CPU tensors: :func:`forward` on the unpacked ``offset_mask``.

    Args:
        input: ``[N, H, W, G*D]``, contiguous.
        offset_mask: ``[N, Ho, Wo, P]``, DCNv4's packed offsets and weights (see
            :mod:`internimage.ops.packing`); the padding columns are never read.
        geometry: The operator's scalar arguments.

    Returns:
        ``[N, Ho, Wo, G*D]`` in the dtype of ``input``.
    """
    offset, mask = unpack_offset_mask(offset_mask, geometry.group, geometry.points)
    return forward(input, offset, mask, geometry)


def backward_dcnv4(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    offset_mask: torch.Tensor,
    geometry: DCNv3Geometry,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the DCNv4 forward: :func:`backward`, its offset and mask gradients packed.

    Args:
        grad_output: ``[N, Ho, Wo, G*D]``, contiguous.
        input: ``[N, H, W, G*D]``.
        offset_mask: ``[N, Ho, Wo, P]``, DCNv4's packed offsets and weights.
        geometry: The operator's scalar arguments.

    Returns:
        ``(grad_input, grad_offset_mask)`` with the shapes and dtypes of the inputs; the
        padding columns of ``grad_offset_mask`` are exactly zero.
    """
    group, points = geometry.group, geometry.points
    offset, mask = unpack_offset_mask(offset_mask, group, points)
    grad_input, grad_offset, grad_mask = backward(grad_output, input, offset, mask, geometry)
    columns = dcnv4_columns(group, points)
    return grad_input, pack_offset_mask(grad_offset, grad_mask, group, points, columns)
