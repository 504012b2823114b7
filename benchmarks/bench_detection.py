"""Detection on the 2-core CPU: Mask R-CNN + small InternImage on Fashion-MNIST scenes, and the
inference speed of InternImage-T Mask R-CNN at 800 x 1333 with the numba and reference operators.

Usage:
    python benchmarks/bench_detection.py [--epochs N] [--set key=value ...] [--tag TAG]
    python benchmarks/bench_detection.py --backbone runs/<classifier run>/best.pt
    python benchmarks/bench_detection.py --inference-only

The training part follows the recipe of the segmentation benchmark: the backbone is first
trained as a Fashion-MNIST classifier (the ``fashion-mnist`` preset with the detection preset's
architecture, on the bundled *train* images), then the ``fashion-mnist-scenes-detection`` preset
(the scenes as COCO instances; validation scenes are made of the *test* images) starts from its
stem and stages. It reports COCO box and mask AP on the held-out scenes against the targets
(50 and 45) and the training time of both stages. The inference part times InternImage-T Mask
R-CNN (COCO widths, 80 classes, random weights) on one 800 x 1333 image for both operators.

Writes detection[_TAG].json, .md (and _curves.png when training) under benchmarks/results/ (or
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
MODEL = "mask_rcnn_internimage_t_1x_coco"


def inference_speed(height: int, width: int, repeats: int) -> dict[str, Any]:
    """Images/s of InternImage-T Mask R-CNN on one image (random weights, so the heads see up to
    1000 proposals of little meaning; the time is dominated by the backbone and the RoI heads
    either way)."""
    from internimage.detection import create_detection_model

    torch.manual_seed(0)
    model = create_detection_model(MODEL).eval()
    image = torch.rand(3, height, width)
    return {"model": MODEL, "batch": 1, "height": height, "width": width, "repeats": repeats,
            **time_backends(lambda: model([image]), 1, repeats)}


def main() -> None:
    """Run the benchmark and write the result files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dense_arguments(parser, RESULTS)
    parser.add_argument("--box-target", type=float, default=50.0, help="box AP target")
    parser.add_argument("--mask-target", type=float, default=45.0, help="mask AP target")
    parser.add_argument("--repeats", type=int, default=2, help="timed inference passes")
    args = parser.parse_args()

    stamp = datetime.now(timezone.utc)
    command = shlex.join(["python", "benchmarks/bench_detection.py", *sys.argv[1:]])
    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"detection_{args.tag}" if args.tag else "detection"
    record: dict[str, Any] = {
        "benchmark": "Mask R-CNN + InternImage on Fashion-MNIST scenes; T Mask R-CNN inference",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "machine": machine_info(torch.device("cpu")),
        "versions": library_versions("numpy", "numba", "torchvision", "pycocotools"),
        "command": command,
    }
    md = ["# Detection on the CPU", "", f"- date (UTC): {record['date_utc']}"]
    if not args.inference_only:
        result, config, backbone = train_dense(
            "fashion-mnist-scenes-detection", args, f"bench-detection-{stamp:%Y%m%d-%H%M%S}",
            record,
        )
        backbone_s = record.get("backbone", {}).get("wall_time_s", 0.0)
        plot = output_dir / f"{stem}_curves.png"
        atomic_write_bytes(plot, Path(result.plot).read_bytes())
        box, mask = float(result.final["val_bbox_AP"]), float(result.final["val_segm_AP"])
        record.update({
            **{f"val_{key}": float(result.final[f"val_{key}"])
               for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50",
                           "segm_AP75")},
            "targets": {"bbox_AP": args.box_target, "segm_AP": args.mask_target},
            "detection_wall_time_s": round(result.total_time_s, 1),
            "wall_time_s": round(backbone_s + result.total_time_s, 1),
            "target_met": box >= args.box_target and mask >= args.mask_target,
            "config": config_to_dict(config),
            "curves": plot.name,
        })
        det = config.detection
        md += [
            f"- training: {config.model.name} widths (depths {config.model.depths}) + Mask "
            f"R-CNN (FPN {det.fpn_channels}, box FCs {det.box_fc_channels}, mask convs "
            f"{det.mask_convs} x {det.mask_channels}), {config.schedule.epochs} epochs of "
            f"{config.data.scenes_train} scenes of {config.data.scene_size} px, batch "
            f"{config.batch_size}",
            f"- held-out box AP **{box:.2f}** (AP50 {record['val_bbox_AP50']:.2f}), mask AP "
            f"**{mask:.2f}** (AP50 {record['val_segm_AP50']:.2f}); targets {args.box_target:.0f}"
            f" / {args.mask_target:.0f}: {'met' if record['target_met'] else 'NOT met'}",
            backbone_line(record, backbone),
            f"- training time: {(backbone_s + result.total_time_s) / 60:.1f} min"
            + (" (both stages)" if "backbone" in record else
               " (this stage; a backbone given with --backbone is not counted)"),
            "",
            f"![curves]({plot.name})",
            "",
        ]
    speed = inference_speed(800, 1333, args.repeats)
    record["inference"] = speed
    md.append("- InternImage-T Mask R-CNN inference, 800 x 1333, batch 1: " + ", ".join(
        f"{backend} {speed[backend]['images_per_s']:.3f} images/s"
        for backend in ("numba", "reference") if backend in speed
    ) + (f" ({speed['speedup']:.2f}x)" if "speedup" in speed else ""))
    write_results(output_dir, stem, record, md, command)
    print(json.dumps({k: record.get(k) for k in ("val_bbox_AP", "val_segm_AP", "wall_time_s",
                                                 "target_met")}))


if __name__ == "__main__":
    main()
