"""How much of the Fashion-MNIST scenes' labels a classifier can recover from the pixels.

Usage:
    python benchmarks/scenes_ceiling.py [--classifier runs/<classifier run>/best.pt]

The segmentation demo's model has to name each item from what is visible of it. This script
measures how far the backbone's own classifier (the first stage of
``bench_segmentation.py``; trained here unless ``--classifier`` names one) gets on the held-out
scenes' items when the masks are given:

* top-1 on the bundled test items themselves (28 px, the classifier's usual input);
* top-1 on each scene item rendered at its scene size (``render_item_alpha``) without and with
  the pixels that items in front of it hide (set to 0, the Fashion-MNIST background), each
  resized to the classifier's input as its training data was;
* the same split by item size and by the visible share of the item;
* the mIoU of an "oracle-mask" segmentation: the background and every item's visible mask
  exact, each item labelled with the classifier's class for its occluded rendering. A
  segmentation model that draws perfect masks and names items as well as this classifier
  scores this; one that names occluded items better (it is trained on occluded items, the
  classifier never saw one) can score more.

Writes scenes_ceiling[_TAG].json and .md under benchmarks/results/ (or --output-dir).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_common import library_versions, machine_info, train_backbone_classifier, write_results

RESULTS = Path(__file__).resolve().parent / "results"
SIDE_BINS = ((20, 28), (28, 40), (40, 52), (52, 65))
VISIBLE_BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0001))


def classify(loaded: Any, items: list[np.ndarray]) -> np.ndarray:
    """Classes of uint8 grey items ``[h, w]`` (any sizes) by ``loaded``'s own preprocessing."""
    from internimage.data.transforms import normalize, to_float_images

    predictions = []
    with torch.no_grad():
        for item in items:
            x = to_float_images(torch.from_numpy(np.array(item))[None, None],
                                loaded.image_size, interpolation=loaded.interpolation)
            logits = loaded.model(normalize(x, loaded.mean, loaded.std))
            predictions.append(int(logits.argmax(dim=1)))
    return np.asarray(predictions)


def oracle_miou(scenes: list[Any], predicted: np.ndarray, classes: int) -> dict[str, Any]:
    """mIoU with exact masks and background, items labelled ``predicted`` (in instance order)."""
    confusion = np.zeros((classes, classes), np.int64)
    position = 0
    for scene in scenes:
        confusion[0, 0] += int((scene.semantic_mask() == 0).sum())
        for inst in scene.instances:
            confusion[inst.category + 1, predicted[position] + 1] += inst.area
            position += 1
    diagonal = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - diagonal
    # Classes absent from both the labels and the predictions have no IoU (NaN), as in the
    # evaluation's mIoU; they do not count in the mean.
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = 100.0 * diagonal / union
    return {"mIoU": float(np.nanmean(iou)), "IoU": [round(float(v), 2) for v in iou]}


def main() -> None:
    """Run the measurement and write the result files."""
    from internimage.classification.inference import load_classifier
    from internimage.data.fashion_mnist import load_bundled_subset
    from internimage.data.scenes import (
        ITEM_THRESHOLD,
        SCENE_CLASSES,
        generate_scene,
        render_item_alpha,
    )
    from internimage.train import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, default=None, metavar="CHECKPOINT",
                        help="classifier checkpoint (default: train the first stage here)")
    parser.add_argument("--scenes", type=int,
                        default=PRESETS["fashion-mnist-scenes"].data.scenes_val)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    stamp = datetime.now(timezone.utc)
    command = shlex.join(["python", "benchmarks/scenes_ceiling.py", *sys.argv[1:]])
    data = PRESETS["fashion-mnist-scenes"].data
    record: dict[str, Any] = {
        "benchmark": "classifier top-1 on the held-out scenes' items; oracle-mask mIoU",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "machine": machine_info(torch.device("cpu")),
        "versions": library_versions("numpy", "numba"),
        "command": command,
        "scenes": {"split": "validation", "count": args.scenes, "seed": data.scenes_seed,
                   "size": data.scene_size},
    }
    checkpoint = args.classifier
    if checkpoint is None:
        common = ["device=cpu", "output_dir=runs", "progress=false"]
        trained = train_backbone_classifier(PRESETS["fashion-mnist-scenes"].model, common,
                                            f"scenes-ceiling-{stamp:%Y%m%d-%H%M%S}")
        checkpoint = trained.pop("checkpoint")
        record["classifier_training"] = trained
    record["classifier"] = str(checkpoint)
    loaded = load_classifier(checkpoint=checkpoint)

    test_images, test_labels = load_bundled_subset("test")
    native_top1 = float((classify(loaded, list(test_images)) == test_labels).mean() * 100)

    scenes = [generate_scene("validation", i, seed=data.scenes_seed, size=data.scene_size)
              for i in range(args.scenes)]
    rows: list[dict[str, Any]] = []
    rendered, occluded = [], []
    for scene in scenes:
        for inst in scene.instances:
            y, x, side = inst.placement
            alpha = render_item_alpha(test_images[inst.source_index], side)  # uint8 [side, side]
            visible = inst.mask[y : y + side, x : x + side]
            rendered.append(alpha)
            occluded.append(np.where(visible, alpha, 0).astype(np.uint8))
            rows.append({"category": inst.category, "side": side, "area": inst.area,
                         "visible": float(visible.sum() / max((alpha > ITEM_THRESHOLD).sum(), 1))})
    categories = np.asarray([r["category"] for r in rows])
    sides = np.asarray([r["side"] for r in rows])
    areas = np.asarray([r["area"] for r in rows], np.float64)
    visible = np.asarray([r["visible"] for r in rows])
    right_rendered = classify(loaded, rendered) == categories
    predicted = classify(loaded, occluded)
    right_occluded = predicted == categories

    def share(mask: np.ndarray, right: np.ndarray) -> float:
        return float(right[mask].mean() * 100) if mask.any() else float("nan")

    by_side = [{"side": f"{lo}-{hi - 1}", "items": int(m.sum()),
                "top1_rendered": share(m, right_rendered),
                "top1_occluded": share(m, right_occluded)}
               for lo, hi in SIDE_BINS for m in [(sides >= lo) & (sides < hi)]]
    by_visible = [{"visible": f"{lo:.2f}-{min(hi, 1.0):.2f}", "items": int(m.sum()),
                   "pixel_share": float(areas[m].sum() / areas.sum() * 100),
                   "top1_occluded": share(m, right_occluded)}
                  for lo, hi in VISIBLE_BINS for m in [(visible >= lo) & (visible < hi)]]
    oracle = oracle_miou(scenes, predicted, len(SCENE_CLASSES))
    record.update({
        "items": len(rows),
        "top1_test_items": native_top1,
        "top1_rendered": float(right_rendered.mean() * 100),
        "top1_occluded": float(right_occluded.mean() * 100),
        "pixel_weighted_top1_occluded": float((right_occluded * areas).sum() / areas.sum() * 100),
        "by_side": by_side,
        "by_visible": by_visible,
        "oracle_mask_mIoU": oracle["mIoU"],
        "oracle_mask_IoU": dict(zip(SCENE_CLASSES, oracle["IoU"], strict=True)),
    })
    md = [
        "# How much of the scenes' labels a classifier recovers",
        "",
        f"- date (UTC): {record['date_utc']}",
        f"- classifier: {checkpoint} (the segmentation benchmark's first stage)",
        f"- {args.scenes} validation scenes ({len(rows)} items); top-1 of the classifier on the "
        f"bundled test items {native_top1:.2f}%, on the scene items rendered at their size "
        f"{record['top1_rendered']:.2f}%, with the hidden parts removed "
        f"{record['top1_occluded']:.2f}% (pixel-weighted "
        f"{record['pixel_weighted_top1_occluded']:.2f}%)",
        f"- oracle-mask mIoU (exact masks, items named by the classifier): "
        f"**{oracle['mIoU']:.2f}%**",
        "",
        "| item side | items | top-1 rendered | top-1 occluded |",
        "|---|---|---|---|",
        *(f"| {r['side']} | {r['items']} | {r['top1_rendered']:.1f}% | {r['top1_occluded']:.1f}% |"
          for r in by_side),
        "",
        "| visible share | items | share of item pixels | top-1 occluded |",
        "|---|---|---|---|",
        *(f"| {r['visible']} | {r['items']} | {r['pixel_share']:.1f}% | "
          f"{r['top1_occluded']:.1f}% |" for r in by_visible),
        "",
        "Oracle-mask IoU per class: " + ", ".join(
            f"{name} {value:.1f}" for name, value in record["oracle_mask_IoU"].items()),
        "",
    ]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"scenes_ceiling_{args.tag}" if args.tag else "scenes_ceiling"
    write_results(args.output_dir, stem, record, md, command)
    print(json.dumps({k: record[k] for k in ("top1_occluded", "oracle_mask_mIoU")}))


if __name__ == "__main__":
    main()
