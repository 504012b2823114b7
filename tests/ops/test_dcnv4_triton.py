"""DCNv4 on the Triton backend under the Triton interpreter (CPU): golden cases and the reference.

As in ``test_triton_kernels.py``, ``TRITON_INTERPRET=1`` must be set before Triton is imported, so
every interpreter check runs in one child process (this file run as a script with the variable
set) and the tests assert on the outcome the child reports for each check.

Tolerances: the golden cases use the README's ``1e-10 * max(1, largest |value|)`` (float64). The
random cases use the Triton tests' ``TOLERANCES`` per dtype, against the reference on the same
values (float32 atomics in the backward, half types rounded once from float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_dcnv4 import GOLDEN_SETTINGS, _golden_cases, make_inputs  # noqa: E402
from test_triton_kernels import TOLERANCES  # noqa: E402

from internimage.ops.geometry import dcnv4_columns  # noqa: E402

#: Random cases against the reference: (name, make_inputs arguments, dtype).
RANDOM_CASES: dict[str, dict] = {
    "base_float32": dict(),
    "kernel1_d8": dict(kernel_size=1, pad=0, group=4, d=8),
    "kernel5_d12": dict(kernel_size=5, pad=2, group=2, d=12, h=7, w=6),
    "stride2_remove_center_d5": dict(stride=2, remove_center=True, group=3, d=5, h=7, w=6),
    "float16_d16": dict(group=2, d=16, dtype="float16"),
    "bfloat16_d12": dict(group=2, d=12, dtype="bfloat16"),
    "float64_dilation2": dict(dilation=2, pad=2, h=6, w=7, dtype="float64"),
}
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


def _run(backend: str, input: torch.Tensor, offset_mask: torch.Tensor, grad: torch.Tensor,
         **kwargs: object) -> tuple[torch.Tensor, ...]:
    import internimage.ops as ops

    leaves = [t.detach().clone().requires_grad_(True) for t in (input, offset_mask)]
    with ops.use_backend(backend):
        out = ops.dcnv4(*leaves, **kwargs)
        if backend == "triton":
            assert "internimage_dcnv4" in type(out.grad_fn).__name__, type(out.grad_fn)
        grads = torch.autograd.grad(out, leaves, grad)
    return (out.detach(), *grads)


def _golden_check(golden_dir: Path) -> None:
    for case, t in _golden_cases(golden_dir):
        kwargs = {key: case[key] for key in GOLDEN_SETTINGS}
        actual = _run("triton", t["input"], t["offset_mask"], t["grad_weight"], **kwargs)
        for name, a in zip(("output", "grad_input", "grad_offset_mask"), actual, strict=True):
            expected = t[name]
            tolerance = 1e-10 * max(1.0, expected.abs().max().item())
            error = (a - expected).abs().max().item()
            assert error <= tolerance, f"{case['name']} {name}: error {error:.3g}"
        padding = actual[2][..., 3 * case["group"] * case["points"]:]
        assert (padding == 0).all(), f"{case['name']}: padding gradient not zero"


def _random_check(settings: dict) -> None:
    settings = dict(settings)
    dtype = _DTYPES[settings.pop("dtype", "float32")]
    group, d = settings.get("group", 2), settings.pop("d", 3)
    input, offset_mask = make_inputs(d=d, dtype=dtype, **settings)
    kwargs = {key: settings[key] for key in ("kernel_size", "stride", "pad", "dilation",
                                             "remove_center") if key in settings}
    kwargs |= dict(group=group, group_channels=d)
    out_shape = (*offset_mask.shape[:3], input.shape[3])
    grad = torch.randn(out_shape, generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64).to(dtype)
    actual = _run("triton", input, offset_mask, grad, **kwargs)
    expected = _run("reference", input, offset_mask, grad, **kwargs)
    rtol, atol = TOLERANCES[dtype]
    for name, a, e in zip(("output", "grad_input", "grad_offset_mask"), actual, expected,
                          strict=True):
        assert a.dtype == dtype and a.shape == e.shape, name
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    k = settings.get("kernel_size", 3) ** 2 - int(settings.get("remove_center", False))
    assert actual[2].shape[-1] == dcnv4_columns(group, k)
    assert (actual[2][..., 3 * group * k:] == 0).all(), "padding gradient not zero"


def _padding_not_read() -> None:
    input, offset_mask = make_inputs(garbage=0.0, dtype=torch.float32)
    grad = torch.randn(2, 5, 6, 6)
    clean = _run("triton", input, offset_mask, grad, group=2, group_channels=3)
    offset_mask[..., 54:] = float("nan")
    dirty = _run("triton", input, offset_mask, grad, group=2, group_channels=3)
    for a, b in zip(clean, dirty, strict=True):
        assert torch.equal(a, b)


def _kernels_read_in_place() -> None:
    # The kernels take the packed tensor itself (no unpacked copy) and check its width.
    from internimage.ops import triton_kernels
    from internimage.ops.geometry import DCNv3Geometry

    input, offset_mask = make_inputs(n=1, dtype=torch.float32)
    geometry = DCNv3Geometry(3, 1, 1, 1, 2)
    out = triton_kernels.forward_dcnv4(input, offset_mask, geometry)
    grad_input, grad_offset_mask = triton_kernels.backward_dcnv4(
        torch.ones_like(out), input, offset_mask, geometry)
    assert grad_input.shape == input.shape and grad_offset_mask.shape == offset_mask.shape
    try:
        triton_kernels.forward_dcnv4(input, offset_mask[..., :-1], geometry)
    except ValueError as error:
        assert "offset_mask" in str(error), error
    else:
        raise AssertionError("a packed tensor of the wrong width was accepted")


def _opcheck() -> None:
    from internimage.ops.registration import dcnv4_op

    input, offset_mask = make_inputs(n=2, h=4, w=5, group=2, d=3, dtype=torch.float32)
    args = (input.requires_grad_(True), offset_mask.requires_grad_(True), 3, 1, 1, 1, 2, 3, 1.0,
            False, "triton")
    torch.library.opcheck(dcnv4_op, args)


def _interpreter_checks(golden_dir: Path | None) -> dict[str, str]:
    """Run in the child: every check; name -> 'ok', 'skipped: ...' or the error."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    results: dict[str, str] = {}

    def record(name: str, check: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            check()
        except Exception as error:  # noqa: BLE001 - every failure is reported to the parent
            results[name] = f"{type(error).__name__}: {error}"
        else:
            results[name] = "ok"
        results[f"{name}.seconds"] = f"{time.perf_counter() - start:.2f}"

    if golden_dir is not None:
        record("golden", lambda: _golden_check(golden_dir))
    for name, settings in RANDOM_CASES.items():
        record(name, lambda settings=settings: _random_check(settings))
    record("padding_not_read", _padding_not_read)
    record("kernels_read_in_place", _kernels_read_in_place)
    record("opcheck", _opcheck)
    return results


@pytest.fixture(scope="module")
def interpreter_results(request: pytest.FixtureRequest) -> dict[str, str]:
    """Outcome of every interpreter check, from one child process with TRITON_INTERPRET=1."""
    pytest.importorskip("triton", reason="triton is not installed (optional extra)")
    from conftest import GOLDEN_DIR

    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("INTERNIMAGE_DCNV3_BACKEND", None)
    args = [sys.executable, str(Path(__file__).resolve()), "--interpret"]
    if (GOLDEN_DIR / "README.md").is_file():
        args.append(str(GOLDEN_DIR))
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=540)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"interpreter child failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.interpret
def test_interpreter_golden_cases(interpreter_results: dict[str, str], golden_dir: Path) -> None:
    assert interpreter_results["golden"] == "ok", interpreter_results["golden"]


@pytest.mark.interpret
@pytest.mark.parametrize("name", [*RANDOM_CASES, "padding_not_read", "kernels_read_in_place",
                                  "opcheck"])
def test_interpreter_matches_reference(interpreter_results: dict[str, str], name: str) -> None:
    assert interpreter_results[name] == "ok", f"{name}: {interpreter_results[name]}"


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "--interpret" and len(argv) <= 2:
        golden = Path(argv[1]) if len(argv) == 2 else None
        print("RESULTS " + json.dumps(_interpreter_checks(golden)))
        return 0
    print(f"usage: {Path(__file__).name} --interpret [GOLDEN_DIR]")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
