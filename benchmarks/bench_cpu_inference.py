"""The fastest CPU inference of InternImage-T: eager, torch.compile, bfloat16 and onnxruntime.

In one run, at 224 px and batch 1 and 8 (the default), with the numba DCNv3 operator for the
PyTorch paths:

* eager float32 and eager bfloat16 (weights converted; native on CPUs with AVX-512 BF16/AMX);
* ``torch.compile`` of the whole model (fullgraph) in float32 and bfloat16;
* onnxruntime on the exported float32 graph (standard operators, DCNv3 as GridSample);

and the rate of a 2048^3 float32 matmul, so that each path's achieved FLOP rate (2 x MACs per
image) is a share of the machine's measured peak. Target: the fastest path at >= 65% of that
peak at batch 8. bfloat16's accuracy is stated as its largest output difference from float32
on the same random images and, with ``--accuracy-checkpoint`` (a classifier trained with
``internimage train``, e.g. the Fashion-MNIST main job), as the top-1 of that classifier on the
bundled Fashion-MNIST test images in both dtypes.

Usage::

    python benchmarks/bench_cpu_inference.py [--accuracy-checkpoint runs/<run>/best.pt]

Writes cpu_inference.json and .md under benchmarks/results/ (or --output-dir).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench_common import library_versions, machine_info, write_results
from internimage.bench import (
    Measurement,
    benchmark_model,
    bfloat16_is_native,
    format_table,
    matmul_gflops,
)

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SHARE = 0.65


def classifier_accuracy(checkpoint: Path) -> dict[str, Any]:
    """Top-1 of a trained classifier on the bundled Fashion-MNIST test images, float32 and
    bfloat16 (weights converted, eager, numba operator)."""
    import copy

    from internimage.classification.inference import load_classifier
    from internimage.data.fashion_mnist import load_bundled_subset
    from internimage.data.transforms import normalize, to_float_images

    loaded = load_classifier(checkpoint=checkpoint)
    model = loaded.model
    images, labels = load_bundled_subset("test")
    # The evaluation preprocessing of training: [N, 1, 28, 28] uint8 -> normalised [N, 3, S, S].
    x = to_float_images(torch.from_numpy(images).unsqueeze(1), loaded.image_size,
                        interpolation=loaded.interpolation)
    x = normalize(x, loaded.mean, loaded.std)
    target = torch.from_numpy(labels).long()
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "images": len(target)}
    predictions = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        net = copy.deepcopy(model).to(dtype).eval()
        with torch.inference_mode():
            logits = torch.cat([net(chunk.to(dtype)).float() for chunk in x.split(256)])
        predictions[name] = logits.argmax(1)
        out[f"top1_{name}"] = 100 * float((predictions[name] == target).float().mean())
    out["prediction_agreement"] = 100 * float(
        (predictions["float32"] == predictions["bfloat16"]).float().mean()
    )
    return out


def _markdown(record: dict[str, Any], results: list[Measurement]) -> list[str]:
    best = record["fastest_batch8"]
    lines = [
        "# CPU inference of InternImage-T",
        "",
        f"- date (UTC): {record['date_utc']}",
        f"- matmul (2048^3) at the start: float32 {record['peak_gflops']:.1f} GFLOP/s, bfloat16 "
        f"{record['bf16_matmul_gflops']:.1f} GFLOP/s"
        if record.get("bf16_matmul_gflops") else
        f"- float32 matmul (2048^3) at the start: {record['peak_gflops']:.1f} GFLOP/s",
        "- each row's share is against a float32 matmul timed right after that row (the "
        "machine's speed drifts during a run)",
        f"- fastest at batch 8: **{best['path']} {best['dtype']}**, {best['images_per_s']:.2f} "
        f"images/s = **{100 * best['peak_share']:.1f}%** of the float32 matmul rate "
        f"(target {100 * TARGET_SHARE:.0f}%: {'met' if record['target_met'] else 'NOT met'})",
        "",
        "```",
        format_table(results),
        "```",
        "",
    ]
    accuracy = record.get("accuracy")
    if accuracy:
        lines += [
            f"- bfloat16 accuracy: a trained Fashion-MNIST classifier scores "
            f"{accuracy['top1_float32']:.2f}% top-1 in float32 and "
            f"{accuracy['top1_bfloat16']:.2f}% in bfloat16 on the {accuracy['images']} bundled "
            f"test images ({accuracy['prediction_agreement']:.2f}% of predictions identical)",
            "",
        ]
    return lines


def main() -> None:
    """Run the benchmark and write the result files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="internimage_t")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--paths", default="eager,compile,onnxruntime")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--backends", default="numba")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy-checkpoint", type=Path, default=None)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="cpu_inference")
    args = parser.parse_args()

    stamp = datetime.now(timezone.utc)
    # The accuracy check first: it is quick, and a bad checkpoint should not cost the timings.
    accuracy = (None if args.accuracy_checkpoint is None
                else classifier_accuracy(args.accuracy_checkpoint))
    command = shlex.join(["python", "benchmarks/bench_cpu_inference.py", *sys.argv[1:]])
    machine = machine_info(torch.device("cpu"))
    peak = matmul_gflops()
    bf16_peak = matmul_gflops(torch.bfloat16) if bfloat16_is_native() else None

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = benchmark_model(
        args.model, paths=args.paths.split(","), dtypes=args.dtypes.split(","),
        backends=args.backends.split(","), batches=args.batch, image_size=args.image_size,
        repeats=args.repeats, progress=progress,
    )
    timed8 = [m for m in results if m.batch == max(args.batch) and m.skipped is None]
    fastest = max(timed8, key=lambda m: m.images_per_s or 0.0)
    record: dict[str, Any] = {
        "benchmark": "InternImage-T CPU inference by path and dtype",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "machine": {**machine, "bf16_native": bfloat16_is_native()},
        "versions": library_versions("numpy", "numba", "onnx", "onnxruntime"),
        "command": command,
        "peak_gflops": peak,
        "bf16_matmul_gflops": bf16_peak,
        "target_share": TARGET_SHARE,
        "fastest_batch8": fastest.as_dict(),
        "target_met": (fastest.peak_share or 0.0) >= TARGET_SHARE,
        "measurements": [m.as_dict() for m in results],
    }
    if accuracy is not None:
        record["accuracy"] = accuracy
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_results(args.output_dir, args.stem, record, _markdown(record, results), command)
    print(format_table(results))


if __name__ == "__main__":
    main()
