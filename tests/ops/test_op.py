"""The public operator: input validation, backend choice, registration (opcheck, torch.compile)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import internimage.ops as ops
from internimage.ops import dcnv3, dcnv3_reference, use_backend
from internimage.ops.registration import dcnv3_op


def make_inputs(
    n: int = 2, h: int = 5, w: int = 6, group: int = 2, d: int = 3, kernel: int = 3,
    dtype: torch.dtype = torch.float32, requires_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    points = kernel * kernel
    input = torch.randn(n, h, w, group * d, dtype=dtype)
    offset = torch.randn(n, h, w, group * points * 2, dtype=dtype)
    mask = torch.rand(n, h, w, group * points, dtype=dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (input, offset, mask))  # type: ignore


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda i, o, m: (i[0], o, m), "input must be 4-D"),
        (lambda i, o, m: (i, o[..., :-2], m), "offset has 34 channels, expected group.points.2"),
        (lambda i, o, m: (i, o, m[..., :-1]), "mask has 17 channels, expected group\\*points"),
        (lambda i, o, m: (i, o[:, :-1], m), "offset spatial size \\(4, 6\\) is not the output"),
        (lambda i, o, m: (i, o, m[:1]), "mask batch 1 does not match input batch 2"),
        (lambda i, o, m: (i[..., :5], o, m), "input channels C=5 are not divisible by group=2"),
        (lambda i, o, m: (i, o.double(), m), "dtype mismatch"),
        (lambda i, o, m: (i.long(), o, m), "input has dtype torch.int64"),
        (lambda i, o, m: (i, o.to("meta"), m), "device mismatch"),
        (lambda i, o, m: (i.numpy(), o, m), "input must be a torch.Tensor"),
    ],
)
def test_bad_tensors_are_named(change, message: str) -> None:  # type: ignore[no-untyped-def]
    input, offset, mask = change(*make_inputs())
    with pytest.raises((ValueError, TypeError), match=message):
        dcnv3(input, offset, mask, group=2)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kernel_size=0), "kernel_size must be a positive integer"),
        (dict(stride=0), "stride must be a positive integer"),
        (dict(dilation=-1), "dilation must be a positive integer"),
        (dict(group=0), "group must be a positive integer"),
        (dict(pad=-1), "pad must be a non-negative integer"),
        (dict(kernel_size=2.5), "kernel_size must be a positive integer"),
        (dict(kernel_size=4, remove_center=True), "remove_center needs an odd kernel_size"),
        (dict(kernel_size=1, pad=0, remove_center=True), "leaves no sampling point"),
        (dict(offset_scale=float("nan")), "offset_scale must be finite"),
    ],
)
def test_bad_scalars_are_named(kwargs: dict, message: str) -> None:
    input, offset, mask = make_inputs()
    arguments = dict(group=2) | kwargs
    with pytest.raises(ValueError, match=message):
        dcnv3(input, offset, mask, **arguments)


def test_input_too_small_for_kernel() -> None:
    input = torch.randn(1, 2, 2, 4)
    with pytest.raises(ValueError, match="too small"):
        dcnv3(input, torch.zeros(1, 1, 1, 2 * 25 * 2), torch.zeros(1, 1, 1, 50),
              kernel_size=5, pad=0, group=2)


# ---------------------------------------------------------------- backend choice


def test_available_backends_lists_reference_and_numba() -> None:
    names = ops.available_backends()
    assert names[-1] == "reference"
    assert "numba" in names


def test_use_backend_forces_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    from internimage.ops import backends

    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    cpu = torch.device("cpu")
    assert backends.resolve_backend(cpu) == "numba"
    with use_backend("reference"):
        assert backends.resolve_backend(cpu) == "reference"
        with use_backend("auto"):
            assert backends.resolve_backend(cpu) == "numba"
        assert backends.resolve_backend(cpu) == "reference"
    assert backends.resolve_backend(cpu) == "numba"


def test_environment_variable_forces_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from internimage.ops import backends

    monkeypatch.setenv(ops.ENV_VAR, "reference")
    assert backends.resolve_backend(torch.device("cpu")) == "reference"
    # The context manager wins over the environment.
    with use_backend("numba"):
        assert backends.resolve_backend(torch.device("cpu")) == "numba"
    monkeypatch.setenv(ops.ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match="unknown DCNv3 backend 'cuda-magic'"):
        backends.resolve_backend(torch.device("cpu"))


def test_forced_backend_on_wrong_device_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    from internimage.ops import backends

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with use_backend("numba"), pytest.raises(RuntimeError, match="'numba'.*CPU tensors only"):
        backends.resolve_backend(torch.device("meta"))
    if not torch.cuda.is_available():
        with use_backend("triton"), pytest.raises(RuntimeError, match="'triton'.*not available"):
            backends.resolve_backend(torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown DCNv3 backend"):
        with use_backend("fast"):
            pass


def test_reference_backend_runs_on_meta_device() -> None:
    # Shape inference without data (the model is built on meta for huge variants).
    input, offset, mask = (t.to("meta") for t in make_inputs())
    assert dcnv3(input, offset, mask, group=2).shape == (2, 5, 6, 6)


def test_importing_the_package_does_not_import_triton_or_compile() -> None:
    code = (
        "import sys, internimage, internimage.ops;"
        "assert 'triton' not in sys.modules, 'triton imported';"
        "assert 'internimage.ops.cpu_kernels' not in sys.modules, 'kernels imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- registered op


def test_numba_backend_matches_reference_through_public_function() -> None:
    input, offset, mask = make_inputs(dtype=torch.float64, requires_grad=True)
    with use_backend("numba"):
        fast = dcnv3(input, offset, mask, group=2)
    grads_fast = torch.autograd.grad(fast.square().sum(), (input, offset, mask))
    slow = dcnv3_reference(input, offset, mask, group=2)
    grads_slow = torch.autograd.grad(slow.square().sum(), (input, offset, mask))
    torch.testing.assert_close(fast, slow)
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype: torch.dtype) -> None:
    input, offset, mask = make_inputs(n=2, h=4, w=5, group=2, d=3, dtype=dtype,
                                      requires_grad=True)
    # Keep samples away from integer pixel positions, where bilinear sampling has kinks.
    offset = (offset.detach() * 0.3 + 0.37).requires_grad_(True)
    args = (input, offset, mask, 3, 1, 1, 1, 2, 1.0, False, "numba")
    torch.library.opcheck(dcnv3_op, args)
    # Stride 2 and offset_scale 2: a 4x5 input gives a 2x3 output.
    strided = (input[:1], offset[:1, ::2, ::2], mask[:1, ::2, ::2])
    torch.library.opcheck(dcnv3_op, (*strided, 3, 2, 1, 1, 2, 2.0, False, "numba"))


def test_registered_op_validates_direct_calls() -> None:
    input, offset, mask = make_inputs()
    with pytest.raises(ValueError, match="offset spatial size"):
        torch.ops.internimage.dcnv3(input, offset, mask, 3, 2, 1, 1, 2, 1.0, False, "numba")


def test_compile_fullgraph_has_no_graph_break() -> None:
    torch._dynamo.reset()
    input, offset, mask = make_inputs(requires_grad=True)

    def layer(x: torch.Tensor, o: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        m = torch.softmax(m.reshape(*m.shape[:3], 2, 9), dim=-1).reshape(m.shape)
        return dcnv3(x * 2.0, o, m, group=2).relu()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(input, offset, mask)
    expected = layer(input, offset, mask)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), (input, offset, mask))
    grads_eager = torch.autograd.grad(expected.sum(), (input, offset, mask))
    for a, b in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(a, b)
    # A forced backend is read when tracing and baked into the graph.
    with use_backend("reference"):
        torch.testing.assert_close(compiled(input, offset, mask), expected)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_autocast_runs_mixed_dtypes_in_the_autocast_dtype(backend: str) -> None:
    # CUDA autocast hands the op bfloat16/float16 features and offsets but a float32 mask (its
    # softmax runs in float32); the op must cast, not reject, and run in the autocast dtype.
    input, offset, mask = make_inputs(n=2, h=6, w=7, group=2, d=5)
    input = input.bfloat16().requires_grad_(True)
    offset = (offset * 0.3 + 0.37).bfloat16().requires_grad_(True)
    mask = mask.requires_grad_(True)  # float32
    with use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        out = dcnv3(input, offset, mask, group=2)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().square().sum(), (input, offset, mask))
    # Each gradient comes back in its tensor's own dtype, as autocast's casts do.
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.bfloat16, torch.float32]
    with use_backend(backend):
        expected = dcnv3(input, offset, mask.bfloat16(), group=2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_autocast_leaves_float64_alone_and_off_means_strict() -> None:
    input, offset, mask = make_inputs(dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dcnv3(input, offset, mask, group=2).dtype == torch.float64
    # Without autocast, mixed dtypes are still an error that names them.
    with pytest.raises(TypeError, match="dtype mismatch"):
        dcnv3(input.float(), offset.float(), mask.bfloat16(), group=2)


def test_compile_fullgraph_under_autocast() -> None:
    torch._dynamo.reset()
    input, offset, mask = make_inputs()

    def layer(x: torch.Tensor, o: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return dcnv3(x.bfloat16(), o.bfloat16(), m, group=2)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.compile(layer, fullgraph=True, backend="aot_eager")(input, offset, mask)
        expected = layer(input, offset, mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_any_batch_size_including_zero() -> None:
    for n in (0, 1, 3, 7):
        input, offset, mask = make_inputs(n=n, requires_grad=True)
        out = dcnv3(input, offset, mask, group=2)
        assert out.shape == (n, 5, 6, 6)
        out.sum().backward()
        assert input.grad.shape == input.shape and offset.grad.shape == offset.shape


def test_triton_backward_honours_deterministic_algorithms() -> None:
    from internimage.ops.registration import _alert_not_deterministic

    _alert_not_deterministic()  # off by default: nothing happens
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="not deterministic"):
            _alert_not_deterministic()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="not deterministic"):
            _alert_not_deterministic()
    finally:
        torch.use_deterministic_algorithms(previous)
