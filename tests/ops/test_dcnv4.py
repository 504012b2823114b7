"""The DCNv4 operator: upstream golden cases, the packed layout, gradients, dtypes, errors.

DCNv4 samples exactly as DCNv3 does; only its offsets and weights come packed in one tensor. So
besides the upstream golden cases, most checks compare it with DCNv3 on the unpacked tensors.

Tolerances. Golden cases: the README's ``1e-10 * max(1, largest |value|)`` in float64. The numba
backend against DCNv3's numba backend: bitwise, both run the same kernels on the same values.
Half types against the float32 reference on the same (rounded) values: the operator computes in
float32 and rounds each result once, so every value is within half an ulp of the half type of
the largest value; 4 ulp leaves room for float32 summation order only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import internimage.ops as ops
from internimage.ops import dcnv3, dcnv4, dcnv4_reference, use_backend
from internimage.ops.geometry import dcnv4_columns
from internimage.ops.packing import pack_offset_mask, unpack_offset_mask
from internimage.ops.registration import dcnv4_op

CPU_BACKENDS = ("reference", "numba")
GOLDEN_SETTINGS = ("kernel_size", "stride", "pad", "dilation", "group", "group_channels",
                   "offset_scale", "remove_center")


def _points(kernel_size: int, remove_center: bool) -> int:
    return kernel_size * kernel_size - int(remove_center)


def make_inputs(
    n: int = 2, h: int = 5, w: int = 6, group: int = 2, d: int = 3, kernel_size: int = 3,
    stride: int = 1, pad: int = 1, dilation: int = 1, remove_center: bool = False,
    dtype: torch.dtype = torch.float64, garbage: float = 1e4, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(input, offset_mask)``; the padding columns hold ``garbage``-sized values.

    Offsets are ``integer + fraction`` with the fraction in [0.1, 0.4], so no point lies on an
    integer pixel position where bilinear sampling has a kink. Weights take either sign.
    """
    generator = torch.Generator().manual_seed(seed)
    k = _points(kernel_size, remove_center)
    span = dilation * (kernel_size - 1) + 1
    ho, wo = (h + 2 * pad - span) // stride + 1, (w + 2 * pad - span) // stride + 1
    input = torch.randn(n, h, w, group * d, generator=generator, dtype=torch.float64)
    whole = torch.randint(-2, 3, (n, ho, wo, group * k * 2), generator=generator)
    offset = whole + 0.1 + 0.3 * torch.rand(whole.shape, generator=generator, dtype=torch.float64)
    mask = torch.randn(n, ho, wo, group * k, generator=generator, dtype=torch.float64)
    columns = dcnv4_columns(group, k)
    offset_mask = pack_offset_mask(offset, mask, group, k, columns)
    offset_mask[..., 3 * group * k:] = garbage * torch.randn(
        n, ho, wo, columns - 3 * group * k, generator=generator, dtype=torch.float64)
    return input.to(dtype), offset_mask.to(dtype)


def _with_grads(
    backend: str, input: torch.Tensor, offset_mask: torch.Tensor, grad_output: torch.Tensor | None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(True) for t in (input, offset_mask)]
    with use_backend(backend):
        out = dcnv4(*leaves, **kwargs)
    if grad_output is None:
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                                  dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, grad_output)
    return out.detach(), grads[0], grads[1]


# ---------------------------------------------------------------- upstream golden cases


def _golden_cases(golden_dir: Path) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    cases = json.loads((golden_dir / "dcnv4_ops.json").read_text())
    tensors = load_file(golden_dir / "dcnv4_ops.safetensors")
    return [
        (case, {key.split(".", 1)[1]: value for key, value in tensors.items()
                if key.split(".", 1)[0] == case["name"]})
        for case in cases
    ]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_upstream_golden_cases(golden_dir: Path, backend: str) -> None:
    cases = _golden_cases(golden_dir)
    assert [case["name"] for case, _ in cases] == ["case0", "case1", "case2", "case3"]
    for case, t in cases:
        kwargs = {key: case[key] for key in GOLDEN_SETTINGS}
        columns = dcnv4_columns(case["group"], case["points"])
        assert columns == case["padded_offset_dim"] == t["offset_mask"].shape[-1]
        actual = _with_grads(backend, t["input"], t["offset_mask"], t["grad_weight"], **kwargs)
        for name, a in zip(("output", "grad_input", "grad_offset_mask"), actual, strict=True):
            expected = t[name]
            assert a.dtype == torch.float64 and a.shape == expected.shape, (name, a.shape)
            tolerance = 1e-10 * max(1.0, expected.abs().max().item())
            error = (a - expected).abs().max().item()
            assert error <= tolerance, f"{case['name']} {name}: error {error:.3g} > {tolerance:.3g}"
        padding = actual[2][..., 3 * case["group"] * case["points"]:]
        assert (padding == 0).all(), case["name"]


# ---------------------------------------------------------------- the packed layout


def test_packing_round_trip_and_layout() -> None:
    group, k = 3, 8
    columns = dcnv4_columns(group, k)
    assert columns == 72
    assert [dcnv4_columns(g, 9) for g in (1, 2, 4, 8)] == [32, 56, 112, 216]
    offset = torch.arange(2 * group * k, dtype=torch.float64).view(1, 1, 1, -1)
    mask = -torch.arange(group * k, dtype=torch.float64).view(1, 1, 1, -1) - 1
    packed = pack_offset_mask(offset, mask, group, k, columns)
    # Group 1, point 2: x at 3K + 4, y at 3K + 5, weight at 3K + 2K + 2.
    point = 1 * k + 2
    assert packed[0, 0, 0, 3 * k + 4] == offset[0, 0, 0, 2 * point]
    assert packed[0, 0, 0, 3 * k + 5] == offset[0, 0, 0, 2 * point + 1]
    assert packed[0, 0, 0, 3 * k + 2 * k + 2] == mask[0, 0, 0, point]
    unpacked = unpack_offset_mask(packed, group, k)
    assert torch.equal(unpacked[0], offset) and torch.equal(unpacked[1], mask)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_equals_dcnv3_on_the_unpacked_tensors(backend: str) -> None:
    input, offset_mask = make_inputs(n=2, h=6, w=7, group=3, d=5, dtype=torch.float32)
    offset, mask = unpack_offset_mask(offset_mask, 3, 9)
    grad = torch.randn(2, 6, 7, 15)
    v4 = _with_grads(backend, input, offset_mask, grad, group=3, group_channels=5)
    leaves = [t.clone().requires_grad_(True) for t in (input, offset, mask)]
    with use_backend(backend):
        out = dcnv3(*leaves, group=3)
    v3 = (out, *torch.autograd.grad(out, leaves, grad))
    # The same kernels (or the same reference) on the same values: bitwise equal.
    assert torch.equal(v4[0], v3[0]) and torch.equal(v4[1], v3[1])
    assert torch.equal(v4[2], pack_offset_mask(v3[2], v3[3], 3, 9, dcnv4_columns(3, 9)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fill", [0.0, 1e30, float("nan"), float("inf")])
def test_padding_columns_are_never_read(backend: str, fill: float) -> None:
    input, offset_mask = make_inputs(group=2, d=3, garbage=0.0)  # P = 56, 2 padding columns
    assert offset_mask.shape[-1] - 3 * 2 * 9 == 2
    grad = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    clean = _with_grads(backend, input, offset_mask, grad, group=2, group_channels=3)
    dirty_mask = offset_mask.clone()
    dirty_mask[..., 54:] = fill
    dirty = _with_grads(backend, input, dirty_mask, grad, group=2, group_channels=3)
    for a, b in zip(clean, dirty, strict=True):
        assert torch.equal(a, b)
    assert (dirty[2][..., 54:] == 0).all()


# ---------------------------------------------------------------- gradients and shapes


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(kernel_size=1, pad=0, group=3, d=2),
        dict(kernel_size=5, pad=2, group=1, d=2, h=4, w=5),
        dict(stride=2, remove_center=True, h=6, w=5),
        dict(dilation=2, pad=2, offset_scale=0.5, group=1, d=1),
    ],
    ids=["base", "kernel1", "kernel5", "stride2_remove_center", "dilation2_scale_half"],
)
def test_gradcheck(backend: str, settings: dict) -> None:
    settings = dict(settings)
    offset_scale = settings.pop("offset_scale", 1.0)
    shape = {k: settings.pop(k) for k in ("h", "w") if k in settings}
    n, group, d = 1, settings.pop("group", 2), settings.pop("d", 2)
    input, offset_mask = make_inputs(n=n, group=group, d=d, **shape, **settings, garbage=0.0)
    # Small offsets keep every point away from integer positions across the finite differences.
    k = _points(settings.get("kernel_size", 3), settings.get("remove_center", False))
    blocks = offset_mask[..., : 3 * group * k].unflatten(-1, (group, 3 * k))
    blocks[..., : 2 * k] = blocks[..., : 2 * k].frac().abs() * 0.3 + 0.35
    leaves = (input.requires_grad_(True), offset_mask.requires_grad_(True))

    def op(x: torch.Tensor, om: torch.Tensor) -> torch.Tensor:
        with use_backend(backend):
            return dcnv4(x, om, group=group, group_channels=d, offset_scale=offset_scale,
                         **settings)

    assert torch.autograd.gradcheck(op, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "settings",
    [
        dict(kernel_size=1, pad=0, group=4, d=8),
        dict(kernel_size=5, pad=2, group=2, d=12),
        dict(kernel_size=5, pad=2, dilation=2, remove_center=True, group=1, d=8),
        dict(kernel_size=3, group=2, d=12, stride=2),
        dict(kernel_size=3, group=5, d=16),
        dict(kernel_size=7, pad=3, group=1, d=24),
        dict(kernel_size=2, pad=0, group=3, d=1),
    ],
    ids=["k1_d8", "k5_d12", "k5_dil2_rc_d8", "k3_d12_s2", "k3_g5_d16", "k7_d24", "k2_d1"],
)
def test_numba_matches_reference_any_kernel_and_group_width(settings: dict) -> None:
    group, d = settings.pop("group"), settings.pop("d")
    input, offset_mask = make_inputs(n=2, h=9, w=8, group=group, d=d, **settings)
    grad = None
    fast = _with_grads("numba", input, offset_mask, grad, group=group, group_channels=d,
                       **settings)
    slow = _with_grads("reference", input, offset_mask, grad, group=group, group_channels=d,
                       **settings)
    k = _points(settings["kernel_size"], settings.get("remove_center", False))
    assert fast[2].shape[-1] == dcnv4_columns(group, k)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert (fast[2][..., 3 * group * k:] == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_forward_and_backward(backend: str, dtype: torch.dtype) -> None:
    input, offset_mask = make_inputs(n=2, h=6, w=7, group=2, d=16, dtype=dtype)
    grad = torch.randn(2, 6, 7, 32, dtype=torch.float64).to(dtype)
    actual = _with_grads(backend, input, offset_mask, grad, group=2, group_channels=16)
    # The float32 reference on the very same (rounded) values.
    expected = _with_grads("reference", input.float(), offset_mask.float(), grad.float(),
                           group=2, group_channels=16)
    ulp = torch.finfo(dtype).eps
    for name, a, e in zip(("output", "grad_input", "grad_offset_mask"), actual, expected,
                          strict=True):
        assert a.dtype == dtype, name
        scale = e.abs().max().item()
        error = (a.float() - e).abs().max().item()
        assert error <= 4 * ulp * scale, f"{name}: {error:.3g} > {4 * ulp * scale:.3g}"
    assert (actual[2][..., 54:] == 0).all()


@pytest.mark.parametrize("n", [0, 1, 3])
def test_any_batch_size(n: int) -> None:
    input, offset_mask = make_inputs(n=n, dtype=torch.float32)
    out, grad_input, grad_offset_mask = _with_grads("numba", input, offset_mask, None, group=2,
                                                    group_channels=3)
    assert out.shape == (n, 5, 6, 6)
    assert grad_input.shape == input.shape and grad_offset_mask.shape == offset_mask.shape


def test_reference_backend_runs_on_meta_device() -> None:
    input, offset_mask = (t.to("meta") for t in make_inputs())
    assert dcnv4(input, offset_mask, group=2, group_channels=3).shape == (2, 5, 6, 6)


# ---------------------------------------------------------------- registration and dispatch


def test_backend_choice_applies() -> None:
    input, offset_mask = make_inputs(dtype=torch.float32)
    input.requires_grad_(True)
    with use_backend("numba"):
        fast = dcnv4(input, offset_mask, group=2, group_channels=3)
    with use_backend("reference"):
        slow = dcnv4(input, offset_mask, group=2, group_channels=3)
    # The numba call goes through the registered op; the reference is plain autograd.
    assert "internimage_dcnv4" in type(fast.grad_fn).__name__
    assert "dcnv4" not in type(slow.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype: torch.dtype) -> None:
    input, offset_mask = make_inputs(n=2, h=4, w=5, group=2, d=3, dtype=dtype)
    args = (input.requires_grad_(True), offset_mask.requires_grad_(True), 3, 1, 1, 1, 2, 3, 1.0,
            False, "numba")
    torch.library.opcheck(dcnv4_op, args)


def test_registered_op_validates_direct_calls() -> None:
    input, offset_mask = make_inputs()
    with pytest.raises(ValueError, match="offset_mask has 55 columns"):
        torch.ops.internimage.dcnv4(input, offset_mask[..., :55], 3, 1, 1, 1, 2, 3, 1.0, False,
                                    "numba")


def test_compile_fullgraph_has_no_graph_break() -> None:
    torch._dynamo.reset()
    input, offset_mask = make_inputs(dtype=torch.float32)
    input.requires_grad_(True)
    offset_mask.requires_grad_(True)

    def layer(x: torch.Tensor, om: torch.Tensor) -> torch.Tensor:
        return dcnv4(x * 2.0, om, group=2, group_channels=3).relu()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(input, offset_mask)
    expected = layer(input, offset_mask)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), (input, offset_mask))
    grads_eager = torch.autograd.grad(expected.sum(), (input, offset_mask))
    for a, b in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(a, b)
    assert (grads[1][..., 54:] == 0).all()
    # A forced backend is read when tracing and baked into the graph.
    with use_backend("reference"):
        torch.testing.assert_close(compiled(input, offset_mask), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_runs_in_the_autocast_dtype(backend: str) -> None:
    input, offset_mask = make_inputs(n=2, h=6, w=7, group=2, d=5, dtype=torch.float32)
    input = input.bfloat16().requires_grad_(True)
    offset_mask = offset_mask.requires_grad_(True)  # float32, as a float32 linear gives it
    with use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        out = dcnv4(input, offset_mask, group=2, group_channels=5)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().square().sum(), (input, offset_mask))
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32]
    with use_backend(backend):
        expected = dcnv4(input, offset_mask.bfloat16(), group=2, group_channels=5)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # float64 is left alone, and without autocast mixed dtypes are an error.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dcnv4(input.double(), offset_mask.double(), group=2,
                     group_channels=5).dtype == torch.float64
    with pytest.raises(TypeError, match="dcnv4: dtype mismatch"):
        dcnv4(input, offset_mask, group=2, group_channels=5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change,kwargs,message",
    [
        (lambda i, om: (i, om[..., :-1]), {},
         "offset_mask has 55 columns; DCNv4 with group=2 and 9 points needs "
         "P = ceil\\(3\\*2\\*9/8\\)\\*8 = 56"),
        (lambda i, om: (i, om[..., :54]), {},
         "offset_mask has 54 columns; .* needs P = .* = 56"),
        (lambda i, om: (i, om), dict(remove_center=True),
         "offset_mask has 56 columns; DCNv4 with group=2 and 8 points needs "
         "P = ceil\\(3\\*2\\*8/8\\)\\*8 = 48"),
        (lambda i, om: (i, om), dict(group_channels=4),
         "input has 6 channels but group\\*group_channels = 2\\*4 = 8"),
        (lambda i, om: (i, om), dict(group_channels=0),
         "group_channels must be a positive integer"),
        (lambda i, om: (i, om), dict(group_channels=3.0),
         "group_channels must be a positive integer"),
        (lambda i, om: (i[0], om), {}, "dcnv4: input must be 4-D"),
        (lambda i, om: (i, om[0]), {}, "dcnv4: offset_mask must be 4-D"),
        (lambda i, om: (i, om[:, :-1]), {},
         "offset_mask spatial size \\(4, 6\\) is not the output size \\(5, 6\\)"),
        (lambda i, om: (i, om[:1]), {}, "offset_mask batch 1 does not match input batch 2"),
        (lambda i, om: (i, om.float()), {}, "dcnv4: dtype mismatch"),
        (lambda i, om: (i.long(), om), {}, "input has dtype torch.int64"),
        (lambda i, om: (i, om.to("meta")), {}, "dcnv4: device mismatch"),
        (lambda i, om: (i.numpy(), om), {}, "dcnv4: input must be a torch.Tensor"),
        (lambda i, om: (i, None), {}, "dcnv4: offset_mask must be a torch.Tensor"),
        (lambda i, om: (i[:, :1, :1], om[:, :1, :1]), dict(pad=0), "too small"),
        (lambda i, om: (i, om), dict(kernel_size=0), "dcnv4: kernel_size must be a positive"),
        (lambda i, om: (i, om), dict(stride=0), "dcnv4: stride must be a positive integer"),
        (lambda i, om: (i, om), dict(dilation=-1), "dcnv4: dilation must be a positive"),
        (lambda i, om: (i, om), dict(group=0), "dcnv4: group must be a positive integer"),
        (lambda i, om: (i, om), dict(pad=-1), "dcnv4: pad must be a non-negative integer"),
        (lambda i, om: (i, om), dict(kernel_size=4, remove_center=True),
         "dcnv4: remove_center needs an odd kernel_size"),
        (lambda i, om: (i, om), dict(kernel_size=1, pad=0, remove_center=True),
         "leaves no sampling point"),
        (lambda i, om: (i, om), dict(offset_scale=float("inf")),
         "dcnv4: offset_scale must be finite"),
    ],
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_input_is_named(change, kwargs: dict, message: str, backend: str) -> None:  # type: ignore[no-untyped-def]
    input, offset_mask = change(*make_inputs())
    arguments = dict(group=2, group_channels=3) | kwargs
    with use_backend(backend), pytest.raises((ValueError, TypeError), match=message):
        dcnv4(input, offset_mask, **arguments)
    with pytest.raises((ValueError, TypeError), match=message):
        dcnv4_reference(input, offset_mask, **arguments)


def test_exported_beside_dcnv3() -> None:
    assert ops.dcnv4 is dcnv4 and "dcnv4" in ops.__all__ and "dcnv4_reference" in ops.__all__
    assert dcnv4.__doc__ and "Args:" in dcnv4.__doc__ and "offset_mask" in dcnv4.__doc__
