"""The numba CPU kernels of DCNv3 against the pure-PyTorch reference and the upstream golden cases.

Tolerances. float64: both sides compute in float64; the reference goes through grid_sample's
normalised coordinates ((2x + 1) / W - 1 and back), which moves a coordinate by a few ulp, so
results agree to ~1e-13 and 1e-10 leaves a wide margin. float32: that same round trip moves a
coordinate by up to ~W * 2^-24 (about 1e-6 pixel for W <= 16), which changes a bilinear weight by as
much, and the gradients add up to P*4 such terms of magnitude ~|input| * |grad_output|; 2e-5 times
the largest magnitude covers this while a wrong weight, corner or point order gives errors of
order 1. Half types: the operator computes in float32 and rounds once at the end, so the error is
a couple of ulp of the half type.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import internimage.ops as ops
from internimage.ops import DCNv3Geometry, cpu_kernels, dcnv3, dcnv3_reference

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}
RESULTS = ("output", "grad_input", "grad_offset", "grad_mask")

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _kwargs(geometry: DCNv3Geometry) -> dict[str, object]:
    return {
        "kernel_size": geometry.kernel_size, "stride": geometry.stride, "pad": geometry.pad,
        "dilation": geometry.dilation, "group": geometry.group,
        "offset_scale": geometry.offset_scale, "remove_center": geometry.remove_center,
    }


def _case(
    n: int, h: int, w: int, channels: int, geometry: DCNv3Geometry, dtype: torch.dtype,
    spread: float = 2.0, seed: int = 0,
) -> Tensors:
    """Random input, offsets (``spread`` pixels), softmax-free positive mask and output gradient."""
    generator = torch.Generator().manual_seed(seed)
    ho, wo = geometry.output_size(h, w)
    g, p = geometry.group, geometry.points
    input = torch.randn(n, h, w, g * channels, generator=generator, dtype=torch.float64)
    offset = torch.randn(n, ho, wo, g * p * 2, generator=generator, dtype=torch.float64) * spread
    mask = torch.rand(n, ho, wo, g * p, generator=generator, dtype=torch.float64)
    grad_out = torch.randn(n, ho, wo, g * channels, generator=generator, dtype=torch.float64)
    return input.to(dtype), offset.to(dtype), mask.to(dtype), grad_out.to(dtype)


def _with_grads(fn: object, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                grad_out: torch.Tensor, geometry: DCNv3Geometry) -> Tensors:
    """Output and the three gradients of ``(fn(...) * grad_out).sum()``."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (input, offset, mask)]
    out = fn(*leaves, **_kwargs(geometry))  # type: ignore[operator]
    if not out.requires_grad:
        # The reference returns a constant for an empty batch: its gradients are zero.
        assert out.numel() == 0
        return (out, *(torch.zeros_like(leaf) for leaf in leaves))  # type: ignore[return-value]
    out.backward(grad_out)
    return (out.detach(), *(leaf.grad for leaf in leaves))  # type: ignore[return-value]


def _numba_op(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
    with ops.use_backend("numba"):
        return dcnv3(*args, **kwargs)  # type: ignore[arg-type]


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str
) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.numel() == 0:
        return
    scale = max(1.0, expected.double().abs().max().item())
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} > {tolerance * scale:.3g}"


def _compare_with_reference(
    n: int, h: int, w: int, channels: int, geometry: DCNv3Geometry, dtype: torch.dtype,
    spread: float = 2.0, seed: int = 0,
) -> None:
    tensors = _case(n, h, w, channels, geometry, dtype, spread, seed)
    expected = _with_grads(dcnv3_reference, *tensors, geometry)
    actual = _with_grads(_numba_op, *tensors, geometry)
    for name, a, e in zip(RESULTS, actual, expected, strict=True):
        _assert_close(a, e, TOLERANCE[dtype], f"{geometry} {dtype} {name}")


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    # The kernels take torch's thread count (internimage.ops.threads).
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# (N, H, W, D, geometry, spread): awkward channel counts (D below, at and above the kernels'
# 16- and 8-channel vector blocks, with and without a remainder: 8 is one 8-block, 12 an 8-block
# and 4 scalar channels, 24 a 16- and an 8-block, 25 both and one scalar), H != W, every kernel
# size, even sizes, stride, dilation, padding, remove_center, offset_scale and offsets far outside
# the image.
CASES = [
    (2, 7, 9, 3, DCNv3Geometry(3, group=2), 2.0),
    (1, 5, 6, 1, DCNv3Geometry(1, pad=0, group=1), 1.5),
    (2, 6, 5, 5, DCNv3Geometry(2, pad=0, group=2), 2.0),
    (1, 9, 8, 3, DCNv3Geometry(3, stride=2, pad=2, dilation=2, group=3), 2.0),
    (2, 6, 7, 4, DCNv3Geometry(4, pad=2, group=1), 2.0),
    (1, 7, 6, 5, DCNv3Geometry(5, pad=2, group=2, remove_center=True), 2.0),
    (1, 8, 7, 2, DCNv3Geometry(6, pad=0, group=2), 1.0),
    (1, 8, 9, 16, DCNv3Geometry(7, pad=3, group=3), 3.0),
    (2, 6, 6, 8, DCNv3Geometry(3, group=2, offset_scale=2.0), 2.0),
    (1, 6, 8, 16, DCNv3Geometry(3, group=4), 40.0),
    (2, 5, 4, 24, DCNv3Geometry(3, stride=2, pad=0, group=1, remove_center=True), 2.0),
    (1, 6, 5, 32, DCNv3Geometry(3, group=5), 2.0),
    (2, 5, 7, 12, DCNv3Geometry(3, group=3), 3.0),
    (1, 7, 5, 25, DCNv3Geometry(3, stride=2, group=2, dilation=2, pad=2), 2.0),
    (1, 4, 6, 8, DCNv3Geometry(5, pad=2, group=2, remove_center=True), 8.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("n", "h", "w", "channels", "geometry", "spread"), CASES)
def test_matches_reference(n: int, h: int, w: int, channels: int, geometry: DCNv3Geometry,
                           spread: float, dtype: torch.dtype) -> None:
    _compare_with_reference(n, h, w, channels, geometry, dtype, spread)


def test_direct_calls_match_reference() -> None:
    geometry = DCNv3Geometry(3, stride=2, group=2, offset_scale=1.5)
    input, offset, mask, grad_out = _case(2, 7, 6, 5, geometry, torch.float64)
    out = cpu_kernels.forward(input, offset, mask, geometry)
    grads = cpu_kernels.backward(grad_out, input, offset, mask, geometry)
    expected = _with_grads(dcnv3_reference, input, offset, mask, grad_out, geometry)
    for name, a, e in zip(RESULTS,
                          (out, *grads), expected, strict=True):
        _assert_close(a, e, TOLERANCE[torch.float64], name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_empty_batch(dtype: torch.dtype) -> None:
    geometry = DCNv3Geometry(3, group=2)
    input, offset, mask, grad_out = _case(0, 5, 4, 3, geometry, dtype)
    out, grad_input, grad_offset, grad_mask = _with_grads(
        _numba_op, input, offset, mask, grad_out, geometry
    )
    assert out.shape == (0, 5, 4, 6) and out.dtype == dtype
    assert grad_input.shape == input.shape and grad_input.dtype == dtype
    assert grad_offset.shape == offset.shape and grad_mask.shape == mask.shape
    direct = cpu_kernels.backward(grad_out, input, offset, mask, geometry)
    assert [t.shape for t in direct] == [input.shape, offset.shape, mask.shape]


def test_non_contiguous_inputs() -> None:
    geometry = DCNv3Geometry(3, group=2)
    input, offset, mask, grad_out = _case(2, 6, 7, 3, geometry, torch.float64)
    # Same values in strided layouts: a channel-sliced input, transposed offset and mask storage.
    wide = torch.zeros(2, 6, 7, 12, dtype=torch.float64)
    wide[..., ::2] = input
    strided_input = wide[..., ::2]
    strided_offset = offset.transpose(1, 2).contiguous().transpose(1, 2)
    strided_mask = mask.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    assert not (strided_input.is_contiguous() or strided_offset.is_contiguous()
                or strided_mask.is_contiguous())
    expected = _with_grads(dcnv3_reference, input, offset, mask, grad_out, geometry)
    actual = _with_grads(_numba_op, strided_input, strided_offset, strided_mask, grad_out,
                         geometry)
    for name, a, e in zip(RESULTS, actual, expected, strict=True):
        _assert_close(a, e, TOLERANCE[torch.float64], name)


def test_gradcheck() -> None:
    geometry = DCNv3Geometry(3, group=2, offset_scale=1.0)
    generator = torch.Generator().manual_seed(1)
    n, h, w, d = 1, 4, 5, 2
    ho, wo = geometry.output_size(h, w)
    p = geometry.points
    input = torch.randn(n, h, w, 2 * d, generator=generator, dtype=torch.float64)
    # Integer part plus a fraction in [0.2, 0.8]: every coordinate stays away from the pixel
    # grid (and the image border), where bilinear sampling has kinks.
    whole = torch.randint(-2, 3, (n, ho, wo, 2 * p * 2), generator=generator)
    fraction = 0.2 + 0.6 * torch.rand(n, ho, wo, 2 * p * 2, generator=generator,
                                      dtype=torch.float64)
    offset = whole + fraction
    mask = torch.rand(n, ho, wo, 2 * p, generator=generator, dtype=torch.float64)
    leaves = [t.requires_grad_(True) for t in (input, offset, mask)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: _numba_op(a, b, c, **_kwargs(geometry)), leaves, eps=1e-6, atol=1e-8
    )


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 2), h=st.integers(1, 7), w=st.integers(1, 7), group=st.integers(1, 3),
    channels=st.integers(1, 9), kernel=st.integers(1, 5), stride=st.integers(1, 2),
    pad=st.integers(0, 2), dilation=st.integers(1, 2), scale=st.sampled_from([0.5, 1.0, 2.0]),
    remove_center=st.booleans(), spread=st.sampled_from([0.5, 2.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_random_configurations(
    n: int, h: int, w: int, group: int, channels: int, kernel: int, stride: int, pad: int,
    dilation: int, scale: float, remove_center: bool, spread: float, seed: int,
) -> None:
    # k = 1 with remove_center leaves no point at all, which the reference does not take.
    remove_center = remove_center and kernel % 2 == 1 and kernel > 1
    geometry = DCNv3Geometry(kernel, stride, pad, dilation, group, scale, remove_center)
    ho, wo = geometry.output_size(h, w)
    if ho <= 0 or wo <= 0:
        return
    _compare_with_reference(n, h, w, channels, geometry, torch.float64, spread, seed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_types_compute_in_float32(dtype: torch.dtype) -> None:
    geometry = DCNv3Geometry(3, group=2)
    input, offset, mask, grad_out = _case(2, 6, 7, 16, geometry, torch.float32)
    # Rounded to a half type, many offsets would land on whole pixels, where bilinear sampling
    # has a kink and the reference's grid_sample picks either one-sided derivative: keep the
    # fractional part in [0.25, 0.75].
    offset = offset.round() + 0.25 + 0.5 * torch.rand(offset.shape)
    rounded = [t.to(dtype) for t in (input, offset, mask, grad_out)]
    expected = _with_grads(dcnv3_reference, *(t.float() for t in rounded), geometry)
    actual = _with_grads(_numba_op, *rounded, geometry)
    # One rounding of the float32 result to the half type (half an ulp) plus float32 noise.
    tolerance = 2 * torch.finfo(dtype).eps
    for name, a, e in zip(RESULTS, actual, expected, strict=True):
        assert a.dtype == dtype, name
        _assert_close(a.float(), e, tolerance, f"{dtype} {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_non_finite_and_huge_offsets(dtype: torch.dtype) -> None:
    geometry = DCNv3Geometry(3, group=2, offset_scale=2.0)
    input, offset, mask, grad_out = _case(2, 5, 6, 3, geometry, dtype, spread=1.0)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30], dtype=dtype)
    flat = offset.view(-1)
    # Every special value as dx and as dy, at many positions.
    positions = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(3))[:60]
    flat[positions] = specials.repeat(12)
    expected = _with_grads(dcnv3_reference, input, offset, mask, grad_out, geometry)
    actual = _with_grads(_numba_op, input, offset, mask, grad_out, geometry)
    for name, a, e in zip(RESULTS, actual, expected, strict=True):
        assert torch.isfinite(a).all(), f"{name} is not finite"
        _assert_close(a, e, TOLERANCE[dtype], name)
    # The points with a special offset get exactly zero offset and mask gradients.
    grad_offset = actual[2].view(-1, 2)
    special_points = torch.zeros(flat.numel(), dtype=torch.bool)
    special_points[positions] = True
    special_points = special_points.view(-1, 2).any(dim=1)
    assert torch.equal(grad_offset[special_points], torch.zeros_like(grad_offset[special_points]))
    assert torch.equal(actual[3].view(-1)[special_points],
                       torch.zeros_like(actual[3].view(-1)[special_points]))


@pytest.mark.parametrize("channels", [2, 16, 25])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_mask_propagates_like_reference(channels: int, value: float) -> None:
    # The point is skipped (outside the image): the reference still adds mask * 0, so the
    # pixel's output is NaN in every channel, through the vector blocks and the scalar ones.
    geometry = DCNv3Geometry(3, group=1)
    input, offset, mask, _ = _case(1, 4, 4, channels, geometry, torch.float64)
    offset[0, 1, 1, 0] = 100.0  # point 0 of pixel (1, 1) is far outside the image
    mask[0, 1, 1, 0] = value
    expected = dcnv3_reference(input, offset, mask, **_kwargs(geometry))  # type: ignore[arg-type]
    actual = _numba_op(input, offset, mask, **_kwargs(geometry))
    assert torch.isnan(expected[0, 1, 1]).all() and torch.isnan(actual[0, 1, 1]).all()
    keep = ~torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), ~keep)
    _assert_close(actual[keep], expected[keep], TOLERANCE[torch.float64], "output")


def test_int64_point_records_give_the_int32_results(monkeypatch: pytest.MonkeyPatch) -> None:
    # Images of 2**31 elements or more need int64 indices in the point records; force that
    # path on a small case (vector and scalar channels, skipped points, a non-finite mask) and
    # check it gives bit for bit the int32 path's results.
    geometry = DCNv3Geometry(3, stride=2, group=2, dilation=2, pad=2)
    input, offset, mask, grad_out = _case(2, 7, 5, 25, geometry, torch.float32, spread=4.0)
    mask[0, 1, 1, 0] = float("nan")
    small = _with_grads(_numba_op, input, offset, mask, grad_out, geometry)
    monkeypatch.setattr(cpu_kernels, "_INT32_RECORDS_BELOW", 0)
    assert cpu_kernels._tables(geometry, 7, 5, 25, 4, 3, np.float32).corners_like.dtype == np.int64
    large = _with_grads(_numba_op, input, offset, mask, grad_out, geometry)
    for name, a, b in zip(RESULTS, small, large, strict=True):
        assert torch.equal(torch.isnan(a), torch.isnan(b)), name
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), f"{name} differs with int64 records"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("h", "w"), [(1, 6), (5, 1), (1, 1), (2, 2)])
def test_maps_of_one_or_two_pixels_per_side(h: int, w: int, dtype: torch.dtype) -> None:
    # Nearly every point has corners outside the image, and clamping a corner to the nearest
    # column or row can land on the same pixel as another corner of the point.
    _compare_with_reference(2, h, w, 16, DCNv3Geometry(3, group=2), dtype, spread=1.0, seed=5)


def test_non_finite_input_and_output_gradient_values() -> None:
    # Corners outside the image are clamped onto inside ones with weight zero: the output and the
    # input gradient must still be non-finite exactly where the reference's are.
    geometry = DCNv3Geometry(3, group=2)
    input, offset, mask, grad_out = _case(2, 5, 6, 16, geometry, torch.float64)
    input[0, 0, 0] = float("inf")  # a corner pixel, read by many clamped corners
    input[0, 2, 5] = -float("inf")
    input[1, 4, 5, 3] = float("nan")
    grad_out[1, 0, 0] = float("inf")
    expected = _with_grads(dcnv3_reference, input, offset, mask, grad_out, geometry)
    actual = _with_grads(_numba_op, input, offset, mask, grad_out, geometry)
    for name, a, e in zip(RESULTS, actual, expected, strict=True):
        both = torch.isfinite(a) & torch.isfinite(e)
        # Nothing is non-finite where the reference's result is finite.
        assert torch.equal(both, torch.isfinite(e)), f"{name}: non-finite where reference is not"
        if name in ("output", "grad_input"):
            assert torch.equal(torch.isfinite(a), torch.isfinite(e)), name
            assert not both.all(), f"{name}: the case has no non-finite element"
        _assert_close(a[both], e[both], TOLERANCE[torch.float64], name)


@pytest.mark.parametrize("channels", [16, 24])
def test_deterministic_across_thread_counts_and_runs(channels: int) -> None:
    geometry = DCNv3Geometry(3, group=4)
    tensors = _case(3, 12, 10, channels, geometry, torch.float32, spread=3.0)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS):
        with _torch_threads(threads):
            results.append(_with_grads(_numba_op, *tensors, geometry))
    for other in results[1:]:
        for name, a, b in zip(RESULTS,
                              results[0], other, strict=True):
            assert torch.equal(a, b), f"{name} differs between runs or thread counts"


def test_import_compiles_nothing() -> None:
    code = (
        "import internimage, internimage.ops.cpu_kernels as k; "
        "kernels = (k._forward_kernel, k._backward_kernel); "
        "assert not any(kernel.signatures for kernel in kernels)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _golden_cases(golden_dir: Path) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    cases = json.loads((golden_dir / "ops.json").read_text())
    tensors = load_file(golden_dir / "ops.safetensors")
    return [
        (case, {key.split(".", 1)[1]: value for key, value in tensors.items()
                if key.split(".", 1)[0] == case["name"]})
        for case in cases
    ]


def test_upstream_golden_cases(golden_dir: Path) -> None:
    cases = _golden_cases(golden_dir)
    assert cases, "ops.json lists no cases"
    for case, t in cases:
        geometry = DCNv3Geometry(
            case["kernel_size"], case["stride"], case["pad"], case["dilation"], case["group"],
            float(case["offset_scale"]), bool(case["remove_center"]),
        )
        actual = _with_grads(_numba_op, t["input"], t["offset"], t["mask"], t["grad_weight"],
                             geometry)
        for name, a in zip(RESULTS, actual, strict=True):
            expected = t[name]
            tolerance = 1e-5 * max(1.0, expected.abs().max().item())
            error = (a - expected).abs().max().item()
            assert error <= tolerance, f"{case['name']} {name}: error {error:.3g} > {tolerance:.3g}"
