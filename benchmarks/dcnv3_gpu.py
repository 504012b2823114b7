"""GPU benchmark of the DCNv3 operator: Triton kernels against the reference backend.

For the four InternImage-T stage shapes (k3 s1 p1) at batch 64, in float32 and bfloat16, it times
the forward pass and forward+backward with CUDA events after warm-up, computes the achieved memory
bandwidth of the forward pass (input, offset, mask and output each counted once: the ideal
traffic ``Bytes_min``) against the device's copy bandwidth measured in
the same run and against the nominal figure, and checks the targets:

* forward: at least 10x faster than the reference and at least 40% of the measured peak bandwidth;
* forward+backward: at least 5x faster than the reference.

The targets are defined for an H100; on other devices the checks are reported but marked as such.

Run on its own (writes ``benchmarks/results/dcnv3_gpu.json`` and ``.md``)::

    python benchmarks/dcnv3_gpu.py [--repeats 50] [--quick] [--sweep]

or through ``benchmarks/bench_dcnv3.py --device cuda``, which calls :func:`run_gpu_section`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench_common import library_versions
from internimage.files import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Targets on an H100 (see module docstring).
FORWARD_SPEEDUP_TARGET = 10.0
FORWARD_BANDWIDTH_TARGET = 0.40
TRAINING_SPEEDUP_TARGET = 5.0

#: Nominal peak memory bandwidth in bytes/s, matched against the device name (first match wins).
NOMINAL_BANDWIDTH = (
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # H100 SXM5 80 GB HBM3
    ("H200", 4.8e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # A100 40 GB
)
#: Nominal figure of the device the targets are defined for (H100 SXM5), always reported.
NOMINAL_H100_BANDWIDTH = 3.35e12


@dataclass(frozen=True)
class StageShape:
    """One DCNv3 call of an InternImage-T stage at 224 px."""

    name: str
    side: int
    channels: int
    groups: int
    kernel_size: int = 3
    stride: int = 1
    pad: int = 1
    dilation: int = 1

    @property
    def points(self) -> int:
        """Sampling points per group (k*k)."""
        return self.kernel_size * self.kernel_size

    def output_side(self) -> int:
        """Output side, from the operator's geometry."""
        from internimage.ops.geometry import DCNv3Geometry

        geometry = DCNv3Geometry(self.kernel_size, self.stride, self.pad, self.dilation,
                                 self.groups)
        return geometry.output_size(self.side, self.side)[0]


STAGES = (
    StageShape("stage1 56x56 C64 G4", 56, 64, 4),
    StageShape("stage2 28x28 C128 G8", 28, 128, 8),
    StageShape("stage3 14x14 C256 G16", 14, 256, 16),
    StageShape("stage4 7x7 C512 G32", 7, 512, 32),
)


# ----------------------------------------------------------------- cost model (no GPU needed)


def forward_bytes(
    batch: int, height: int, width: int, channels: int, groups: int, points: int,
    out_height: int, out_width: int, element_size: int,
) -> int:
    """Ideal memory traffic of one forward call: input, output, offset and mask, once each.

    ``s * (N*H*W*C + N*Q*C + N*Q*3*G*K)`` with ``Q = Ho*Wo``: the offsets are two values per
    point and group, the mask one.
    """
    q = out_height * out_width
    elements = (batch * height * width * channels + batch * q * channels
                + batch * q * 3 * groups * points)
    return element_size * elements


def backward_bytes(
    batch: int, height: int, width: int, channels: int, groups: int, points: int,
    out_height: int, out_width: int, element_size: int,
) -> int:
    """Ideal memory traffic of one backward call.

    Reads grad_output, input, offset and mask; writes grad_input, grad_offset and grad_mask, each
    once (the float32 scatter buffer of half-precision inputs is not counted).
    """
    q = out_height * out_width
    elements = (2 * batch * height * width * channels + batch * q * channels
                + 2 * batch * q * 3 * groups * points)
    return element_size * elements


def forward_flops(
    batch: int, channels: int, groups: int, points: int, out_height: int, out_width: int
) -> int:
    """FLOPs of one forward call: ``N*Q*G*K*(8*D + 20)``."""
    d = channels // groups
    return batch * out_height * out_width * groups * points * (8 * d + 20)


def nominal_bandwidth(device_name: str) -> float | None:
    """Nominal peak memory bandwidth (bytes/s) of a device by name, or None if unknown."""
    for key, value in NOMINAL_BANDWIDTH:
        if key.lower() in device_name.lower():
            return value
    return None


def ratio(slow: float, fast: float) -> float:
    """Speed-up of ``fast`` over ``slow`` (both times), ``inf`` if ``fast`` is zero."""
    return slow / fast if fast > 0 else float("inf")


def targets_for(
    forward_speedup: float, bandwidth_share: float, training_speedup: float
) -> dict[str, bool]:
    """PASS (True) / FAIL (False) of each target for one shape and dtype."""
    return {
        "forward_speedup": forward_speedup >= FORWARD_SPEEDUP_TARGET,
        "forward_bandwidth": bandwidth_share >= FORWARD_BANDWIDTH_TARGET,
        "training_speedup": training_speedup >= TRAINING_SPEEDUP_TARGET,
    }


# ---------------------------------------------------------------------------- measuring


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            "this benchmark needs a CUDA device (torch.cuda.is_available() is False); "
            "run it on a GPU machine with triton installed"
        )
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the benchmark times compiled Triton kernels")
    try:
        import triton  # noqa: F401
    except ImportError as error:
        raise RuntimeError("this benchmark needs triton (pip install triton)") from error


def time_cuda_ms(fn: Callable[[], Any], repeats: int, rounds: int = 5, warmup: int = 3) -> float:
    """Median over ``rounds`` of the mean time per call (ms) of ``repeats`` back-to-back calls.

    Each round brackets its loop with two CUDA events and synchronises only after the loop.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / repeats)
    return statistics.median(per_call)


def measure_copy_bandwidth(nbytes: int = 2**30, repeats: int = 20) -> float:
    """Device memory bandwidth (bytes/s) of a large device-to-device copy: ``2*bytes / t``."""
    source = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    ms = time_cuda_ms(lambda: target.copy_(source), repeats)
    return 2 * nbytes / (ms * 1e-3)


def _stage_tensors(
    stage: StageShape, batch: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    side_out = stage.output_side()
    g, p = stage.groups, stage.points

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=generator)

    input = randn(batch, stage.side, stage.side, stage.channels).to(dtype)
    offset = randn(batch, side_out, side_out, g * p * 2).to(dtype)
    # A softmax over the points, as the module feeds the operator.
    mask = torch.softmax(randn(batch, side_out, side_out, g, p), dim=-1)
    mask = mask.reshape(batch, side_out, side_out, g * p).to(dtype)
    grad_output = randn(batch, side_out, side_out, stage.channels).to(dtype)
    return input, offset, mask, grad_output


def _time_backend(
    backend: str, stage: StageShape, tensors: tuple[torch.Tensor, ...], repeats: int
) -> tuple[float, float]:
    """(forward ms, forward+backward ms) through the public operator with ``backend`` forced."""
    from internimage.ops import dcnv3, use_backend

    input, offset, mask, grad_output = tensors
    kwargs = dict(kernel_size=stage.kernel_size, stride=stage.stride, pad=stage.pad,
                  dilation=stage.dilation, group=stage.groups)
    leaves = [t.detach().requires_grad_(True) for t in (input, offset, mask)]

    def forward() -> None:
        with torch.no_grad():
            dcnv3(input, offset, mask, **kwargs)

    def training() -> None:
        out = dcnv3(*leaves, **kwargs)
        torch.autograd.grad(out, leaves, grad_output)

    with use_backend(backend):
        forward_ms = time_cuda_ms(forward, repeats)
        training_ms = time_cuda_ms(training, max(1, repeats // 2))
    return forward_ms, training_ms


def _max_error(stage: StageShape, tensors: tuple[torch.Tensor, ...]) -> float:
    """Largest |triton - reference| of the forward output, a guard against timing wrong code."""
    from internimage.ops import dcnv3, dcnv3_reference, use_backend

    input, offset, mask, _ = tensors
    kwargs = dict(kernel_size=stage.kernel_size, stride=stage.stride, pad=stage.pad,
                  dilation=stage.dilation, group=stage.groups)
    with torch.no_grad(), use_backend("triton"):
        fast = dcnv3(input, offset, mask, **kwargs).float()
    with torch.no_grad():
        slow = dcnv3_reference(input, offset, mask, **kwargs).float()
    return float((fast - slow).abs().max())


def _sweep_launch_configs(
    stage: StageShape, tensors: tuple[torch.Tensor, ...], repeats: int
) -> list[dict[str, Any]]:
    """Times of a few launch configurations of both kernels, to tune :func:`launch_config`."""
    from internimage.ops import triton_kernels
    from internimage.ops.geometry import DCNv3Geometry

    input, offset, mask, grad_output = tensors
    geometry = DCNv3Geometry(stage.kernel_size, stage.stride, stage.pad, stage.dilation,
                             stage.groups)
    block_d = triton_kernels.launch_config(stage.channels // stage.groups, False).block_d
    rows = []
    for unroll in (True, False):
        for block_q in (16, 32, 64, 128):
            for num_warps in (2, 4, 8):
                config = triton_kernels.LaunchConfig(block_q, block_d, num_warps, unroll)
                fwd = time_cuda_ms(
                    lambda config=config: triton_kernels.forward(input, offset, mask, geometry,
                                                                 config), repeats)
                bwd = time_cuda_ms(
                    lambda config=config: triton_kernels.backward(grad_output, input, offset,
                                                                  mask, geometry, config),
                    repeats)
                rows.append({"block_q": block_q, "block_d": block_d, "num_warps": num_warps,
                             "unroll": unroll, "forward_ms": fwd, "backward_ms": bwd})
    return rows


def _launch(stage: StageShape, dtype: torch.dtype, backward: bool) -> dict[str, Any]:
    """Default launch configuration of the kernels for a stage, recorded with its timings."""
    from internimage.ops import triton_kernels

    config = triton_kernels.launch_config(stage.channels // stage.groups, backward,
                                          stage.points, dtype)
    return config._asdict()


def run_gpu_section(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark the operator on the current CUDA device.

    Args:
        args: Namespace; reads ``repeats`` (int, default 50), ``quick`` (bool: fewer repeats and
            batch 16 instead of 64), ``sweep`` (bool: also time launch configurations), ``batch``
            (int, overrides the batch size), all optional.

    Returns:
        A JSON-serialisable dict: device, versions, date, bandwidth, one row per stage and dtype
        with times, speed-ups, bandwidth share and PASS/FAIL per target, and an overall verdict.

    Raises:
        RuntimeError: No CUDA device, Triton missing, or ``TRITON_INTERPRET=1``.
    """
    _require_cuda()
    quick = bool(getattr(args, "quick", False))
    repeats = int(getattr(args, "repeats", None) or (10 if quick else 50))
    batch = int(getattr(args, "batch", None) or (16 if quick else 64))
    sweep = bool(getattr(args, "sweep", False))
    torch.backends.cuda.matmul.allow_tf32 = False
    device_name = torch.cuda.get_device_name()
    measured = measure_copy_bandwidth(2**28 if quick else 2**30)
    nominal = nominal_bandwidth(device_name)
    is_h100 = "h100" in device_name.lower()
    rows: list[dict[str, Any]] = []
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        for stage in STAGES:
            tensors = _stage_tensors(stage, batch, dtype)
            side_out = stage.output_side()
            sizes = (batch, stage.side, stage.side, stage.channels, stage.groups, stage.points,
                     side_out, side_out, tensors[0].element_size())
            triton_fwd, triton_train = _time_backend("triton", stage, tensors, repeats)
            ref_fwd, ref_train = _time_backend("reference", stage, tensors, max(2, repeats // 5))
            bytes_fwd = forward_bytes(*sizes)
            achieved = bytes_fwd / (triton_fwd * 1e-3)
            forward_speedup = ratio(ref_fwd, triton_fwd)
            training_speedup = ratio(ref_train, triton_train)
            share = achieved / measured
            rows.append({
                "stage": stage.name,
                "dtype": str(dtype).replace("torch.", ""),
                "batch": batch,
                "triton_forward_ms": triton_fwd,
                "reference_forward_ms": ref_fwd,
                "forward_speedup": forward_speedup,
                "triton_fwd_bwd_ms": triton_train,
                "reference_fwd_bwd_ms": ref_train,
                "fwd_bwd_speedup": training_speedup,
                "forward_bytes": bytes_fwd,
                "backward_bytes": backward_bytes(*sizes),
                "forward_gflops": forward_flops(batch, stage.channels, stage.groups,
                                                stage.points, side_out, side_out) / 1e9,
                "achieved_bandwidth_gbs": achieved / 1e9,
                "share_of_measured_bandwidth": share,
                "share_of_nominal_bandwidth": achieved / nominal if nominal else None,
                "max_abs_error_vs_reference": _max_error(stage, tensors),
                "targets": targets_for(forward_speedup, share, training_speedup),
                "launch_forward": _launch(stage, dtype, backward=False),
                "launch_backward": _launch(stage, dtype, backward=True),
            })
            # All InternImage-T stages have 16 channels per group: two shapes cover the sweep.
            if sweep and dtype == torch.bfloat16 and stage in (STAGES[0], STAGES[2]):
                sweeps[stage.name] = _sweep_launch_configs(stage, tensors, repeats)
            del tensors
            torch.cuda.empty_cache()
    passed = all(all(row["targets"].values()) for row in rows)
    result: dict[str, Any] = {
        "benchmark": "dcnv3_gpu",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name,
        "machine": platform.node(),
        "versions": {**library_versions("triton"), "cuda_runtime": str(torch.version.cuda)},
        "batch": batch,
        "repeats": repeats,
        "measured_copy_bandwidth_gbs": measured / 1e9,
        "nominal_bandwidth_gbs": nominal / 1e9 if nominal else None,
        "nominal_h100_bandwidth_gbs": NOMINAL_H100_BANDWIDTH / 1e9,
        "targets": {
            "forward_speedup_min": FORWARD_SPEEDUP_TARGET,
            "forward_share_of_measured_bandwidth_min": FORWARD_BANDWIDTH_TARGET,
            "fwd_bwd_speedup_min": TRAINING_SPEEDUP_TARGET,
            "defined_for": "H100",
            "device_is_h100": is_h100,
        },
        "verdict": ("PASS" if passed else "FAIL") if is_h100 else (
            ("PASS" if passed else "FAIL") + " (device is not an H100; targets are for H100)"),
        "rows": rows,
    }
    if sweeps:
        result["launch_config_sweep_bfloat16"] = sweeps
    return result


# ------------------------------------------------------------------------------- reporting


def to_markdown(result: dict[str, Any]) -> str:
    """Markdown summary of :func:`run_gpu_section`'s result."""
    lines = [
        "# DCNv3 operator on GPU: Triton kernels vs reference",
        "",
        f"- Device: {result['device']} ({result['machine']}), date {result['date_utc']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- Batch {result['batch']}, k3 s1 p1, InternImage-T stage shapes; CUDA-event timing, "
        f"median of 5 rounds of {result['repeats']} calls after warm-up",
        f"- Copy bandwidth measured: {result['measured_copy_bandwidth_gbs']:.0f} GB/s; nominal "
        f"for this device: {_fmt(result['nominal_bandwidth_gbs'], '.0f')} GB/s; nominal H100 SXM: "
        f"{result['nominal_h100_bandwidth_gbs']:.0f} GB/s",
        f"- Targets (H100): forward >= {FORWARD_SPEEDUP_TARGET:g}x reference and >= "
        f"{FORWARD_BANDWIDTH_TARGET:.0%} of measured bandwidth; forward+backward >= "
        f"{TRAINING_SPEEDUP_TARGET:g}x reference",
        f"- **Verdict: {result['verdict']}**",
        "",
        "| stage | dtype | fwd triton ms | fwd ref ms | fwd x | fwd+bwd triton ms | "
        "fwd+bwd ref ms | fwd+bwd x | GB/s | % measured BW | % nominal BW | max err | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        verdicts = " ".join(
            f"{name}:{'PASS' if ok else 'FAIL'}" for name, ok in row["targets"].items())
        nominal_share = row["share_of_nominal_bandwidth"]
        lines.append(
            f"| {row['stage']} | {row['dtype']} | {row['triton_forward_ms']:.3f} | "
            f"{row['reference_forward_ms']:.3f} | {row['forward_speedup']:.1f} | "
            f"{row['triton_fwd_bwd_ms']:.3f} | {row['reference_fwd_bwd_ms']:.3f} | "
            f"{row['fwd_bwd_speedup']:.1f} | {row['achieved_bandwidth_gbs']:.0f} | "
            f"{row['share_of_measured_bandwidth']:.0%} | "
            f"{'-' if nominal_share is None else format(nominal_share, '.0%')} | "
            f"{row['max_abs_error_vs_reference']:.2e} | {verdicts} |"
        )
    for stage, sweep in result.get("launch_config_sweep_bfloat16", {}).items():
        best_f = min(sweep, key=lambda r: r["forward_ms"])
        best_b = min(sweep, key=lambda r: r["backward_ms"])
        lines.append("")
        lines.append(
            f"- Launch sweep {stage} (bf16): best forward block_q={best_f['block_q']} "
            f"warps={best_f['num_warps']} unroll={best_f['unroll']} "
            f"({best_f['forward_ms']:.3f} ms); best backward block_q={best_b['block_q']} "
            f"warps={best_b['num_warps']} unroll={best_b['unroll']} "
            f"({best_b['backward_ms']:.3f} ms)"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "unknown" if value is None else format(value, spec)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the stand-alone benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="calls per timed round")
    parser.add_argument("--quick", action="store_true", help="batch 16, fewer repeats")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 64)")
    parser.add_argument("--sweep", action="store_true",
                        help="also time a grid of launch configurations (bf16)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR,
                        help="where dcnv3_gpu.json and dcnv3_gpu.md are written")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its JSON and markdown results; 1 without a CUDA device."""
    args = parse_args(argv)
    try:
        result = run_gpu_section(args)
    except RuntimeError as error:
        print(f"dcnv3_gpu: {error}", file=sys.stderr)
        return 1
    atomic_write_text(args.output_dir / "dcnv3_gpu.json", json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    atomic_write_text(args.output_dir / "dcnv3_gpu.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
