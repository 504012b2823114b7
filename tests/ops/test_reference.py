"""The pure-PyTorch reference against an independent float64 loop and the upstream golden cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from internimage.ops import dcnv3_reference


def loop_oracle(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    *,
    kernel_size: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    offset_scale: float,
    remove_center: bool,
) -> torch.Tensor:
    """DCNv3 written straight from the specification with Python loops in float64.

    Shares no code with the library: the grid, bilinear weights and zero padding are spelt out
    here one sampling point at a time.
    """
    n, h, w, c = input.shape
    d_per_group = c // group
    k = kernel_size
    half = dilation * (k - 1) // 2
    ho = (h + 2 * pad - (dilation * (k - 1) + 1)) // stride + 1
    wo = (w + 2 * pad - (dilation * (k - 1) + 1)) // stride + 1
    points = [
        (i, j)
        for i in range(k)
        for j in range(k)
        if not (remove_center and i == k // 2 and j == k // 2)
    ]
    num_points = len(points)
    img = input.double().tolist()
    off = offset.double().tolist()
    msk = mask.double().tolist()
    out = torch.zeros(n, ho, wo, c, dtype=torch.float64)

    def pixel(b: int, yy: int, xx: int, ch: int) -> float:
        if 0 <= yy < h and 0 <= xx < w:
            return img[b][yy][xx][ch]
        return 0.0

    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for g in range(group):
                    for p, (i, j) in enumerate(points):
                        q = g * num_points + p
                        dx, dy = off[b][oy][ox][2 * q], off[b][oy][ox][2 * q + 1]
                        x = ox * stride - pad + half + (i * dilation - half + dx) * offset_scale
                        y = oy * stride - pad + half + (j * dilation - half + dy) * offset_scale
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        for ch in range(g * d_per_group, (g + 1) * d_per_group):
                            value = (
                                (1 - fy) * (1 - fx) * pixel(b, y0, x0, ch)
                                + (1 - fy) * fx * pixel(b, y0, x0 + 1, ch)
                                + fy * (1 - fx) * pixel(b, y0 + 1, x0, ch)
                                + fy * fx * pixel(b, y0 + 1, x0 + 1, ch)
                            )
                            out[b, oy, ox, ch] += msk[b][oy][ox][q] * value
    return out


ORACLE_CASES = [
    # (N, H, W, group, D, kernel, stride, pad, dilation, offset_scale, remove_center, spread)
    pytest.param(1, 5, 6, 1, 1, 3, 1, 1, 1, 1.0, False, 1.5, id="D1-zero-padding"),
    pytest.param(2, 4, 7, 2, 3, 3, 1, 1, 1, 1.0, False, 6.0, id="D3-points-far-outside"),
    pytest.param(1, 7, 5, 1, 16, 3, 2, 1, 1, 1.0, False, 1.0, id="D16-stride2"),
    pytest.param(1, 7, 6, 2, 3, 3, 1, 2, 2, 1.0, False, 1.0, id="dilation2"),
    pytest.param(1, 5, 5, 2, 3, 3, 1, 1, 1, 1.0, True, 1.0, id="remove-center"),
    pytest.param(1, 6, 5, 1, 3, 3, 1, 1, 1, 2.0, False, 1.0, id="offset-scale2"),
    pytest.param(1, 5, 6, 1, 2, 4, 1, 1, 1, 1.0, False, 1.0, id="even-kernel"),
    pytest.param(2, 6, 7, 3, 1, 5, 2, 0, 1, 1.0, True, 2.0, id="k5-stride2-pad0"),
]


@pytest.mark.parametrize(
    "n,h,w,group,d,kernel,stride,pad,dilation,offset_scale,remove_center,spread", ORACLE_CASES
)
def test_reference_matches_loop_oracle(
    n: int, h: int, w: int, group: int, d: int, kernel: int, stride: int, pad: int,
    dilation: int, offset_scale: float, remove_center: bool, spread: float,
) -> None:
    points = kernel * kernel - int(remove_center)
    ho = (h + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1
    wo = (w + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1
    input = torch.randn(n, h, w, group * d, dtype=torch.float64)
    offset = torch.randn(n, ho, wo, group * points * 2, dtype=torch.float64) * spread
    mask = torch.rand(n, ho, wo, group * points, dtype=torch.float64)
    kwargs = dict(
        kernel_size=kernel, stride=stride, pad=pad, dilation=dilation, group=group,
        offset_scale=offset_scale, remove_center=remove_center,
    )
    expected = loop_oracle(input, offset, mask, **kwargs)
    actual = dcnv3_reference(input, offset, mask, **kwargs)
    assert actual.shape == (n, ho, wo, group * d)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_zero_offsets_with_offset_scale_two_sample_a_dilated_grid() -> None:
    # The spec: offset_scale scales the base grid too, so zero offsets with scale 2 equal
    # dilation 2 with scale 1 (the output size stays that of the undilated kernel).
    input = torch.randn(1, 9, 8, 4, dtype=torch.float64)
    offset = torch.zeros(1, 9, 8, 9 * 2, dtype=torch.float64)
    mask = torch.rand(1, 9, 8, 9, dtype=torch.float64)
    scaled = dcnv3_reference(input, offset, mask, group=1, offset_scale=2.0)
    # dilation 2 with pad 2 gives the same output grid and the same sampling positions.
    dilated = dcnv3_reference(input, offset, mask, group=1, dilation=2, pad=2)
    torch.testing.assert_close(scaled, dilated, rtol=0, atol=1e-12)


def test_integer_offsets_shift_the_image() -> None:
    # A 1x1 kernel with offset (dx, dy) = (1, 0) and mask 1 reads the right-hand neighbour.
    input = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    offset = torch.zeros(2, 4, 5, 2, dtype=torch.float64)
    offset[..., 0] = 1.0
    mask = torch.ones(2, 4, 5, 1, dtype=torch.float64)
    out = dcnv3_reference(input, offset, mask, kernel_size=1, pad=0, group=1)
    torch.testing.assert_close(out[:, :, :-1], input[:, :, 1:], rtol=0, atol=1e-12)
    assert torch.count_nonzero(out[:, :, -1]) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_builds_coordinates_in_float32(dtype: torch.dtype) -> None:
    # Pixels alternate 0, 1 along a 1200-pixel row and every point reads x + 0.25, which gives
    # 0.25 or 0.75 (exact in half precision). Built in float16/bfloat16, the coordinate x + 0.25
    # rounds back to x beyond x = 512 (float16) or 128 (bfloat16) and would read 0 or 1.
    width = 1200
    row = (torch.arange(width) % 2).to(torch.float32)
    input = row.reshape(1, 1, width, 1)
    offset = torch.zeros(1, 1, width, 2)
    offset[..., 0] = 0.25
    mask = torch.ones(1, 1, width, 1)
    out = dcnv3_reference(
        input.to(dtype), offset.to(dtype), mask.to(dtype), kernel_size=1, pad=0, group=1
    )
    assert out.dtype == dtype
    expected = 0.75 * row + 0.25 * torch.roll(row, -1)
    expected[-1] = 0.75 * row[-1]  # the right neighbour of the last pixel is padding
    torch.testing.assert_close(out.float().flatten(), expected, rtol=0, atol=1e-2)


def test_non_finite_offsets_read_zero_and_pass_no_gradient() -> None:
    input = torch.randn(1, 4, 4, 2, dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(1, 4, 4, 9 * 2, dtype=torch.float64)
    offset[0, 1, 1, 0] = float("nan")  # point 0 of pixel (1, 1)
    offset[0, 2, 2, 2] = float("inf")  # point 1 of pixel (2, 2)
    offset[0, 3, 3, 5] = 1e30  # point 2 of pixel (3, 3), finite but far away
    offset.requires_grad_(True)
    mask = torch.rand(1, 4, 4, 9, dtype=torch.float64, requires_grad=True)
    out = dcnv3_reference(input, offset, mask, group=1)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for grad in (input.grad, offset.grad, mask.grad):
        assert torch.isfinite(grad).all()
    # The broken points behave exactly like points far outside the image.
    far = offset.detach().clone()
    far[0, 1, 1, 0] = -100.0
    far[0, 2, 2, 2] = 100.0
    torch.testing.assert_close(out, dcnv3_reference(input, far, mask, group=1))
    assert offset.grad[0, 1, 1, 0:2].abs().sum() == 0
    assert offset.grad[0, 2, 2, 2:4].abs().sum() == 0
    assert offset.grad[0, 3, 3, 4:6].abs().sum() == 0
    assert mask.grad[0, 1, 1, 0] == 0 and mask.grad[0, 2, 2, 1] == 0


def test_empty_batch_keeps_the_autograd_graph() -> None:
    input = torch.randn(0, 5, 6, 8, requires_grad=True)
    offset = torch.randn(0, 5, 6, 36, requires_grad=True)
    mask = torch.rand(0, 5, 6, 18, requires_grad=True)
    out = dcnv3_reference(input, offset, mask, group=2)
    assert out.shape == (0, 5, 6, 8)
    assert out.requires_grad
    out.sum().backward()
    assert input.grad.shape == input.shape and offset.grad.shape == offset.shape
    assert mask.grad.shape == mask.shape


def _golden_cases(golden_dir: Path) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    cases = json.loads((golden_dir / "ops.json").read_text())
    tensors = load_file(golden_dir / "ops.safetensors")
    return [(case, {k.split(".", 1)[1]: v for k, v in tensors.items()
                    if k.split(".", 1)[0] == case["name"]}) for case in cases]


def test_reference_matches_upstream_golden_cases(golden_dir: Path) -> None:
    cases = _golden_cases(golden_dir)
    assert cases, "ops.json lists no cases"
    for case, t in cases:
        input = t["input"].clone().requires_grad_(True)
        offset = t["offset"].clone().requires_grad_(True)
        mask = t["mask"].clone().requires_grad_(True)
        assert input.shape[-1] == case["group"] * case["group_channels"]
        out = dcnv3_reference(
            input, offset, mask, kernel_size=case["kernel_size"], stride=case["stride"],
            pad=case["pad"], dilation=case["dilation"], group=case["group"],
            offset_scale=case["offset_scale"], remove_center=bool(case["remove_center"]),
        )
        (out * t["grad_weight"]).sum().backward()
        for name, actual in (("output", out), ("grad_input", input.grad),
                             ("grad_offset", offset.grad), ("grad_mask", mask.grad)):
            expected = t[name]
            tolerance = 1e-5 * max(1.0, expected.abs().max().item())
            error = (actual.detach() - expected).abs().max().item()
            assert error <= tolerance, f"{case['name']} {name}: error {error:.3g} > {tolerance:.3g}"
