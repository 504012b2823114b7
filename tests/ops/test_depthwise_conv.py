"""The channels-last depthwise convolution against ``torch.nn.functional.conv2d``.

Tolerances: float64 results agree with conv2d to a few ulp of the largest term (1e-12 is wide);
float32 sums of up to k*k products (forward, input gradient) or N*H*W products (weight and bias
gradients) in another order than oneDNN, so 1e-5 relative to the magnitudes involved, while a
wrong tap, shift or flip gives errors of order 1.
"""

from __future__ import annotations

import numba
import pytest
import torch
import torch.nn.functional as F

from internimage.layers.dcnv3 import DepthwiseConv2d
from internimage.ops import depthwise_conv
from internimage.ops.depthwise_conv import depthwise_conv_nhwc


def _conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    k = weight.shape[-1]
    out = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=k // 2, groups=x.shape[3])
    return out.permute(0, 2, 3, 1)


def _case(n: int, h: int, w: int, c: int, k: int, dtype: torch.dtype,
          bias: bool = True, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    x = randn(n, h, w, c).requires_grad_()
    weight = randn(c, 1, k, k).requires_grad_()
    b = randn(c).requires_grad_() if bias else None
    return x, weight, b, randn(n, h, w, c)


def _outputs(fn, x, weight, bias, grad_out):  # type: ignore[no-untyped-def]
    out = fn(x, weight, bias)
    inputs = [t for t in (x, weight, bias) if t is not None]
    return (out, *torch.autograd.grad(out, inputs, grad_out))


SHAPES = [
    # n, h, w, c, k: C not a power of two, H != W, batch 1, maps smaller than the kernel,
    # a 1x1 kernel, a 5x5 kernel, a single column.
    (2, 5, 7, 3, 3),
    (1, 6, 4, 12, 3),
    (3, 2, 2, 7, 5),
    (2, 1, 1, 5, 3),
    (1, 9, 1, 4, 3),
    (2, 4, 3, 6, 1),
    (2, 7, 6, 10, 5),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d_in_float64(shape: tuple[int, ...], bias: bool) -> None:
    x, weight, b, grad_out = _case(*shape, dtype=torch.float64, bias=bias)
    ours = _outputs(depthwise_conv_nhwc, x, weight, b, grad_out)
    expected = _outputs(_conv2d, x, weight, b, grad_out)
    assert len(ours) == len(expected) == (4 if bias else 3)
    for a, e in zip(ours, expected, strict=True):
        assert a.shape == e.shape and a.dtype == torch.float64
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 2, 2, 128, 3), (4, 16, 16, 16, 3), (2, 8, 5, 24, 5)])
def test_matches_conv2d_in_float32(shape: tuple[int, ...]) -> None:
    x, weight, b, grad_out = _case(*shape, dtype=torch.float32, seed=1)
    ours = _outputs(depthwise_conv_nhwc, x, weight, b, grad_out)
    expected = _outputs(_conv2d, x, weight, b, grad_out)
    for a, e in zip(ours, expected, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=0, atol=1e-5 * float(e.detach().abs().max()))


def test_gradcheck() -> None:
    x, weight, b, _ = _case(2, 4, 5, 3, 3, dtype=torch.float64, seed=2)
    assert torch.autograd.gradcheck(depthwise_conv_nhwc, (x, weight, b))


def test_non_contiguous_input_and_frozen_weight() -> None:
    x, weight, b, grad_out = _case(2, 6, 5, 8, 3, dtype=torch.float64, seed=3)
    # A channels-last view of an NCHW tensor, then every other channel: strided in all dims.
    wide = torch.randn(2, 16, 6, 5, dtype=torch.float64).permute(0, 2, 3, 1)[..., ::2]
    wide.requires_grad_()
    assert not wide.is_contiguous()
    weight.requires_grad_(False)
    out = depthwise_conv_nhwc(wide, weight, b)
    grads = torch.autograd.grad(out, (wide, b), grad_out)
    expected = _conv2d(wide, weight, b)
    expected_grads = torch.autograd.grad(expected, (wide, b), grad_out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for a, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


def test_results_are_bitwise_repeatable_and_independent_of_threads() -> None:
    x, weight, b, grad_out = _case(3, 9, 7, 20, 3, dtype=torch.float32, seed=4)
    # The kernels take torch's thread count (internimage.ops.threads).
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _outputs(depthwise_conv_nhwc, x, weight, b, grad_out)
        torch.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = [_outputs(depthwise_conv_nhwc, x, weight, b, grad_out) for _ in range(2)]
    finally:
        torch.set_num_threads(previous)
    for run in many:
        for a, e in zip(run, single, strict=True):
            assert torch.equal(a, e)


def test_empty_batch() -> None:
    x, weight, b, _ = _case(0, 3, 3, 4, 3, dtype=torch.float32)
    out = depthwise_conv_nhwc(x, weight, b)
    assert out.shape == (0, 3, 3, 4)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(b.grad, torch.zeros_like(b))


def test_other_cases_use_conv2d(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("the numba path was taken")

    monkeypatch.setattr(depthwise_conv._DepthwiseConvNHWC, "apply", fail)
    x, weight, b, _ = _case(2, 4, 4, 6, 3, dtype=torch.bfloat16)
    out = depthwise_conv_nhwc(x, weight, b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, _conv2d(x, weight, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x32, w32, b32, _ = _case(2, 4, 4, 6, 3, dtype=torch.float32)
        assert depthwise_conv_nhwc(x32, w32, b32).dtype == torch.bfloat16
    meta = depthwise_conv_nhwc(x32.to("meta"), w32.to("meta"), b32.to("meta"))
    assert meta.shape == (2, 4, 4, 6) and meta.is_meta


def test_compiles_without_graph_break() -> None:
    torch._dynamo.reset()
    x, weight, b, grad_out = _case(2, 5, 4, 6, 3, dtype=torch.float32, seed=5)
    compiled = torch.compile(depthwise_conv_nhwc, fullgraph=True, backend="aot_eager")
    ours = _outputs(compiled, x, weight, b, grad_out)
    expected = _outputs(_conv2d, x, weight, b, grad_out)
    for a, e in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape", "message"),
    [
        ((2, 4, 4), (4, 1, 3, 3), (4,), "input must be"),
        ((2, 4, 4, 4), (4, 1, 3, 2), (4,), "weight must be"),
        ((2, 4, 4, 4), (4, 1, 2, 2), (4,), "k odd"),
        ((2, 4, 4, 4), (5, 1, 3, 3), (5,), "C = 4"),
        ((2, 4, 4, 4), (4, 1, 3, 3), (3,), "bias must be"),
    ],
)
def test_bad_shapes_are_named(x_shape, w_shape, b_shape, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        depthwise_conv_nhwc(torch.zeros(x_shape), torch.zeros(w_shape), torch.zeros(b_shape))


def test_module_is_a_conv2d_with_the_same_keys_and_results() -> None:
    module = DepthwiseConv2d(6, 5)
    plain = torch.nn.Conv2d(6, 6, 5, 1, 2, groups=6)
    assert isinstance(module, torch.nn.Conv2d)
    assert {k: v.shape for k, v in module.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    plain.load_state_dict(module.state_dict())
    x = torch.randn(2, 6, 7, 5)
    # NCHW in either memory order, NCHW out.
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(module(inp), plain(inp), rtol=0, atol=1e-5)
