"""Segmentation on the 2-core CPU: UperNet + small InternImage on Fashion-MNIST scenes, and the
inference speed of InternImage-T + UperNet at 512 x 512 with the numba and reference operators.

Usage:
    python benchmarks/bench_segmentation.py [--epochs N] [--set key=value ...] [--tag TAG]
    python benchmarks/bench_segmentation.py --backbone runs/<classifier run>/best.pt
    python benchmarks/bench_segmentation.py --from-scratch
    python benchmarks/bench_segmentation.py --inference-only

The training part follows the usual recipe of a dense model, at small scale: first the backbone
is trained as a classifier (the ``fashion-mnist`` preset with the segmentation preset's
architecture, on the bundled Fashion-MNIST *train* images), then the ``fashion-mnist-scenes``
preset (2000 training scenes, 200 held-out validation scenes made from the Fashion-MNIST *test*
images) starts from its stem and stages. It reports the validation mIoU against the target (80%)
and the wall time of both stages together against its budget (60 minutes). ``--backbone``
starts from a classifier trained before (its time is then not counted); ``--from-scratch``
skips the first stage. The inference part
times forward passes of InternImage-T + UperNet (ADE20K widths, 150 classes) on 512 x 512
images in the same process for both operators and reports images/s and their ratio.

Writes segmentation[_TAG].json, .md and _curves.png under benchmarks/results/ (or
--output-dir), with the machine, library versions, date, config and command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench_common import (
    add_dense_arguments,
    backbone_line,
    library_versions,
    machine_info,
    time_backends,
    train_dense,
    write_results,
)
from internimage.files import atomic_write_bytes
from internimage.train import config_to_dict

RESULTS = Path(__file__).resolve().parent / "results"


def inference_speed(batch: int, side: int, repeats: int) -> dict[str, Any]:
    """Images/s of InternImage-T + UperNet (random weights: speed does not depend on them)."""
    from internimage.segmentation import create_segmentation_model

    torch.manual_seed(0)
    model = create_segmentation_model("upernet_internimage_t_ade20k").eval()
    x = torch.randn(batch, 3, side, side)
    return {"model": "upernet_internimage_t_ade20k", "batch": batch, "side": side,
            "repeats": repeats, **time_backends(lambda: model(pixel_values=x), batch, repeats)}


def main() -> None:
    """Run the benchmark and write the result files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dense_arguments(parser, RESULTS)
    parser.add_argument("--target", type=float, default=80.0, help="mIoU target (percent)")
    parser.add_argument("--budget-min", type=float, default=60.0, help="wall-time budget")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes")
    args = parser.parse_args()

    stamp = datetime.now(timezone.utc)
    command = shlex.join(["python", "benchmarks/bench_segmentation.py", *sys.argv[1:]])
    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"segmentation_{args.tag}" if args.tag else "segmentation"
    record: dict[str, Any] = {
        "benchmark": "UperNet + InternImage on Fashion-MNIST scenes; T + UperNet inference",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "machine": machine_info(torch.device("cpu")),
        "versions": library_versions("numpy", "numba", "kornia", "transformers"),
        "command": command,
    }
    md = ["# Segmentation on the CPU", "", f"- date (UTC): {record['date_utc']}"]
    if not args.inference_only:
        result, config, backbone = train_dense(
            "fashion-mnist-scenes", args, f"bench-segmentation-{stamp:%Y%m%d-%H%M%S}", record
        )
        backbone_s = record.get("backbone", {}).get("wall_time_s", 0.0)
        plot = output_dir / f"{stem}_curves.png"
        atomic_write_bytes(plot, Path(result.plot).read_bytes())
        miou = float(result.final["val_mIoU"])
        minutes = (backbone_s + result.total_time_s) / 60
        record.update({
            "val_mIoU": miou,
            "val_mAcc": float(result.final["val_mAcc"]),
            "val_aAcc": float(result.final["val_aAcc"]),
            "best_mIoU": result.best_metric,
            "target_mIoU": args.target,
            "segmentation_wall_time_s": round(result.total_time_s, 1),
            "wall_time_s": round(backbone_s + result.total_time_s, 1),
            "budget_s": args.budget_min * 60,
            "target_met": miou >= args.target and minutes <= args.budget_min,
            "config": config_to_dict(config),
            "curves": plot.name,
        })
        md += [
            f"- training: {config.model.name} widths (depths {config.model.depths}) + UperNet "
            f"(heads {config.segmentation.head_channels}/{config.segmentation.auxiliary_channels})"
            f", {config.schedule.epochs} epochs of {config.data.scenes_train} scenes at "
            f"{config.data.image_size} px, total batch {config.batch_size}",
            f"- held-out validation mIoU: **{miou:.2f}%** (mAcc {record['val_mAcc']:.2f}%, "
            f"aAcc {record['val_aAcc']:.2f}%, best epoch {result.best_metric:.2f}%)",
            backbone_line(record, backbone),
            f"- wall time{' (both stages)' if 'backbone' in record else ''}: {minutes:.1f} min; "
            f"target {args.target:.0f}% mIoU within "
            f"{args.budget_min:.0f} min: {'met' if record['target_met'] else 'NOT met'}",
            "",
            f"![curves]({plot.name})",
            "",
        ]
    speed = inference_speed(batch=1, side=512, repeats=args.repeats)
    record["inference"] = speed
    md.append("- InternImage-T + UperNet inference, 512 x 512, batch 1: " + ", ".join(
        f"{backend} {speed[backend]['images_per_s']:.2f} images/s"
        for backend in ("numba", "reference") if backend in speed
    ) + (f" ({speed['speedup']:.2f}x)" if "speedup" in speed else ""))
    write_results(output_dir, stem, record, md, command)
    print(json.dumps({k: record.get(k) for k in ("val_mIoU", "wall_time_s", "target_met")}))


if __name__ == "__main__":
    main()
