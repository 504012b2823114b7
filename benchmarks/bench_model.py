"""Whole-model benchmark: InternImage with the fast DCNv3 backend against the reference backend.

For one model (default InternImage-T, batch 8, 224 px) it measures, in one run and for each
backend (CPU: numba and reference; CUDA: triton and reference):

* inference throughput (images/s, ``torch.inference_mode``, eval mode);
* one training step (forward, cross-entropy, backward, AdamW step) in seconds;

and the rate of a large fp32 (or bf16 on CUDA) matmul on the same machine, so that the model's
achieved FLOP rate can be stated as a share of the machine's measured matmul peak. The model's
FLOPs are ``2 * count_macs`` (InternImage-T: 9.8 GFLOP per 224-px image). Target: the fast backend
at least 2x the reference backend's inference throughput.

Usage::

    python benchmarks/bench_model.py                       # CPU, writes results/model_cpu.*
    python benchmarks/bench_model.py --device cuda --dtype bf16 --batch 128   # results/model_cuda.*

Results are written atomically as JSON and markdown under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench_common import library_versions, machine_info
from internimage.files import atomic_write_text
from internimage.models import count_macs, create_model
from internimage.ops import available_backends, use_backend

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SPEEDUP_TARGET = 2.0
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_rate(
    device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5
) -> float:
    """Measured FLOP/s of a square matmul (median over ``repeats``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    inner = 1 if device.type == "cpu" else 20
    times = _median_time(lambda: [a @ b for _ in range(inner)], device, 1, repeats)
    return 2 * size**3 * inner / statistics.median(times)


def bench_backends(
    model: torch.nn.Module, backends: list[str], images: torch.Tensor, labels: torch.Tensor,
    dtype: torch.dtype, warmup: int, repeats: int,
) -> list[dict[str, Any]]:
    """Inference images/s and training-step seconds for each DCNv3 backend.

    The backends alternate within each repeat so that a change in the machine's load during the
    run affects all of them alike.
    """
    device = images.device
    batch = images.shape[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def infer() -> None:
        with torch.inference_mode(), autocast():
            model(images)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    times: dict[tuple[str, str], list[float]] = {}
    for phase, fn, training in (("inference", infer, False), ("train", train_step, True)):
        model.train(training)
        for backend in backends:
            with use_backend(backend):
                _median_time(fn, device, warmup, 0)  # compilation, caches, allocator
        for _ in range(repeats):
            for backend in backends:
                with use_backend(backend):
                    times.setdefault((phase, backend), []).extend(
                        _median_time(fn, device, 0, 1)
                    )
    rows = []
    for backend in backends:
        infer_times, train_times = times[("inference", backend)], times[("train", backend)]
        rows.append({
            "backend": backend,
            "inference_images_per_s": batch / statistics.median(infer_times),
            "inference_times_s": infer_times,
            "train_step_s": statistics.median(train_times),
            "train_step_times_s": train_times,
            "train_images_per_s": batch / statistics.median(train_times),
        })
    return rows


def _markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    where = result["machine"].get("gpu", result["machine"]["cpu"])
    lines = [
        f"# Model benchmark: {s['model']} on {where}",
        "",
        f"Date {result['date']}; batch {s['batch']}, {s['image_size']} px, {s['dtype']}, "
        f"device {s['device']}; medians of {s['repeats']} runs per backend (backends "
        f"alternating) after {s['warmup']} warm-up.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} CPUs, "
        f"{result['machine']['torch_threads']} torch threads; load average "
        f"{result['machine'].get('load_average_1m_at_start', float('nan')):.1f} at start.",
        "",
        f"Model cost: {result['gflop_per_image']:.2f} GFLOP per image forward (2 x MACs). "
        f"Measured matmul rate: {result['matmul_gflops']:.1f} GFLOP/s "
        f"({s['matmul_dtype']}, 2048^3).",
        "",
        "| backend | inference images/s | share of matmul peak | training step s | "
        "training images/s |",
        "|---|---|---|---|---|",
    ]
    for row in result["backends"]:
        lines.append(
            f"| {row['backend']} | {row['inference_images_per_s']:.2f} | "
            f"{100 * row['inference_peak_share']:.1f}% | {row['train_step_s']:.3f} | "
            f"{row['train_images_per_s']:.2f} |"
        )
    if "speedup" in result:
        sp = result["speedup"]
        lines += [
            "",
            f"Fast backend vs reference: inference {sp['inference']:.2f}x, training step "
            f"{sp['training']:.2f}x (target >= {SPEEDUP_TARGET:.0f}x inference: "
            f"{'met' if sp['target_met'] else 'NOT met'}).",
            "",
            f"Only the DCNv3 operator differs between the runs: the reference backend spends at "
            f"least {100 * sp['reference_operator_share_at_least']:.0f}% of its inference time in "
            f"the operator. A {SPEEDUP_TARGET:.0f}x model speedup needs that share to be at least "
            f"{100 * (1 - 1 / SPEEDUP_TARGET):.0f}% even with a free operator.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="internimage_t")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="fp32", choices=tuple(_DTYPES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default=None,
                        help="comma-separated (default: numba,reference on CPU; "
                             "triton,reference on CUDA)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results path without suffix (default results/model_<device>)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = _DTYPES[args.dtype]
    fast = "numba" if device.type == "cpu" else "triton"
    backends = args.backends.split(",") if args.backends else [fast, "reference"]
    missing = [b for b in backends if b not in available_backends()]
    if missing:
        print(f"backends not available here: {missing}", file=sys.stderr)
        return 2

    machine = machine_info(device)
    torch.manual_seed(0)
    model = create_model(args.model).to(device)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    flop_per_image = 2 * count_macs(model, (1, 3, args.image_size, args.image_size))
    matmul_dtype = dtype if device.type == "cuda" else torch.float32
    peak = matmul_rate(device, matmul_dtype)

    rows = bench_backends(model, backends, images, labels, dtype, args.warmup, args.repeats)
    for row in rows:
        row["inference_gflops"] = row["inference_images_per_s"] * flop_per_image / 1e9
    # Measure the matmul rate again after the model runs and keep the better one: the peak.
    peak = max(peak, matmul_rate(device, matmul_dtype))
    for row in rows:
        row["inference_peak_share"] = row["inference_images_per_s"] * flop_per_image / peak

    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": library_versions("numba", "triton"),
        "settings": {"model": args.model, "device": args.device, "dtype": args.dtype,
                     "batch": args.batch, "image_size": args.image_size, "warmup": args.warmup,
                     "repeats": args.repeats, "matmul_dtype": str(matmul_dtype)},
        "gflop_per_image": flop_per_image / 1e9,
        "matmul_gflops": peak / 1e9,
        "backends": rows,
    }
    by_name = {row["backend"]: row for row in rows}
    if fast in by_name and "reference" in by_name:
        speed = by_name[fast]["inference_images_per_s"] / by_name["reference"][
            "inference_images_per_s"]
        result["speedup"] = {
            "inference": speed,
            "training": by_name["reference"]["train_step_s"] / by_name[fast]["train_step_s"],
            "target": SPEEDUP_TARGET,
            "target_met": speed >= SPEEDUP_TARGET,
            # Only the operator differs between the runs, so the reference spends at least this
            # share of its inference time in it (Amdahl: a model speedup s needs >= 1 - 1/s).
            "reference_operator_share_at_least": 1 - 1 / speed,
        }
    stem = args.output or RESULTS_DIR / f"model_{device.type}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(stem.with_suffix(".md"), _markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
