"""``internimage eval``: top-1/top-5 accuracy of a classifier, mIoU of a segmentation model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from internimage.cli.arguments import non_negative_int, positive_floats, positive_int
from internimage.train.config import CLASSIFICATION_DATASETS, SEGMENTATION_DATASETS

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="measure top-1/top-5 accuracy or mIoU",
        description=(
            "Evaluate a classifier or a segmentation model. A training checkpoint brings its "
            "model, classes, preprocessing and dataset; released weights (--pretrained) and "
            "plain weight files need --data and --data-root (for classifiers: class "
            "sub-folders in label order, e.g. the ImageNet validation set arranged by synset; "
            "for the released ADE20K models: --data ade20k --data-root DIR). Segmentation "
            "follows mmseg's test procedure: short side resized to the training crop, whole "
            "image or sliding window, optionally several scales and flips."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="training checkpoint or weights file")
    source.add_argument("--pretrained", metavar="MODEL", help="released weights of MODEL")
    parser.add_argument("--model", help="model name of a plain weights file")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("--data", choices=list(CLASSIFICATION_DATASETS + SEGMENTATION_DATASETS),
                        help="dataset (default: the checkpoint's)")
    parser.add_argument("--data-root", help="dataset folder (for 'folder': the class folders)")
    parser.add_argument("--image-size", type=positive_int,
                        help="input side (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="images per forward pass (default: %(default)s)")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="DataLoader worker processes (default: %(default)s)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                        help="mixed-precision dtype of the forward pass (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    segmentation = parser.add_argument_group("segmentation")
    segmentation.add_argument("--mode", choices=["whole", "slide"], default="whole",
                              help="whole-image or sliding-window inference (default: "
                                   "%(default)s)")
    segmentation.add_argument("--scales", type=positive_floats, default=(1.0,), metavar="R,R,...",
                              help="test scales relative to the training crop, e.g. "
                                   "0.5,0.75,1,1.25,1.5,1.75 (default: 1)")
    segmentation.add_argument("--flip", action="store_true",
                              help="also predict the mirrored images and average")
    parser.set_defaults(func=run)


def _progress_bar(total: int) -> Any | None:
    """A tqdm bar over ``total`` images on a terminal; None in a log file (noise there) or
    without tqdm."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(total=total, unit="img", desc="evaluating", mininterval=1.0)


def is_segmentation_source(checkpoint: Path | None, pretrained: str | None) -> bool:
    """Whether ``--checkpoint``/``--pretrained`` name a segmentation model."""
    if pretrained is not None:
        return pretrained.startswith("upernet_")
    from internimage.models.checkpoint import read_checkpoint

    assert checkpoint is not None
    return read_checkpoint(checkpoint).get("task") == "segmentation"


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics; returns the exit code."""
    import json

    import torch
    from torch.utils.data import DataLoader, Subset

    from internimage.data.datasets import (
        ImageFolderDataset,
        collate_skipping_unreadable,
    )
    from internimage.data.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist_dataset
    from internimage.errors import DataError, UsageError
    from internimage.train.distributed import resolve_device
    from internimage.train.evaluate import evaluate
    from internimage.train.inference import load_classifier

    device = resolve_device(args.device, 0)
    # A --model names the variant of plain classifier weights: never a segmentation model.
    if args.model is None and is_segmentation_source(args.checkpoint, args.pretrained):
        return _run_segmentation(args, device)
    if args.data in SEGMENTATION_DATASETS:
        raise UsageError(f"--data {args.data} is a segmentation dataset; this is a classifier")
    loaded = load_classifier(
        checkpoint=args.checkpoint, pretrained=args.pretrained, model_name=args.model,
        use_ema=args.ema, device=device, image_size=args.image_size,
    )
    dataset_kind = args.data or loaded.dataset
    root = args.data_root if args.data_root is not None else (
        loaded.data_root if args.data is None else None
    )
    if dataset_kind is None:
        raise UsageError("say which data to evaluate on: --data folder --data-root DIR")
    if dataset_kind in ("fashion-mnist-subset", "fashion-mnist"):
        if len(loaded.classes) != len(FASHION_MNIST_CLASSES):
            raise DataError(
                f"the model has {len(loaded.classes)} classes, Fashion-MNIST "
                f"{len(FASHION_MNIST_CLASSES)}; evaluate it on data with its own classes "
                f"(--data folder --data-root DIR)"
            )
        dataset = fashion_mnist_dataset(dataset_kind, "test", root)
    else:
        if root is None:
            raise UsageError("--data folder needs --data-root DIR")
        folder = Path(root)
        # A training run's root holds split folders; evaluate its validation split.
        if loaded.dataset == "folder" and args.data_root is None:
            folder = folder / "val"
        dataset = ImageFolderDataset(folder, loaded.transform())
        if len(dataset.classes) != len(loaded.classes):
            raise DataError(
                f"{folder} has {len(dataset.classes)} class folders, the model "
                f"{len(loaded.classes)} classes"
            )
    if args.limit is not None:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
        collate_fn=collate_skipping_unreadable,
    )
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    progress = _progress_bar(len(dataset))
    try:
        metrics = evaluate(
            loaded.model, loader, device=device, image_size=loaded.image_size, mean=loaded.mean,
            std=loaded.std, amp_dtype=amp_dtype, progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
            f"loss {metrics['loss']:.4f}  ({metrics['count']} images)"
        )
    return 0


def _run_segmentation(args: argparse.Namespace, device: Any) -> int:
    """Evaluate a segmentation checkpoint or released model; prints mIoU, mAcc and aAcc."""
    import dataclasses
    import json

    from torch.utils.data import Subset

    from internimage.errors import UsageError
    from internimage.segmentation.evaluate import evaluate_segmenter, inference_settings
    from internimage.segmentation.loading import load_segmenter
    from internimage.train.config import PRESETS, TrainConfig
    from internimage.train.tasks import create_task

    if args.data is not None and args.data not in SEGMENTATION_DATASETS:
        raise UsageError(f"--data {args.data} is a classification dataset; this is a "
                         f"segmentation model ({', '.join(SEGMENTATION_DATASETS)})")
    if args.model is not None or args.image_size is not None:
        raise UsageError("--model and --image-size are for classifiers; a segmentation "
                         "checkpoint brings its model and crop size")
    loaded = load_segmenter(checkpoint=args.checkpoint, pretrained=args.pretrained,
                            use_ema=args.ema, device=device)
    config = loaded.config if isinstance(loaded.config, TrainConfig) else None
    if config is None:
        if args.data is None or args.data_root is None:
            raise UsageError("say which data to evaluate on, e.g. --data ade20k --data-root DIR")
        config = PRESETS["ade20k"]
    data = config.data
    if args.data is not None:
        data = dataclasses.replace(data, dataset=args.data, root=args.data_root)
    elif args.data_root is not None:
        data = dataclasses.replace(data, root=args.data_root)
    task = create_task(dataclasses.replace(config, data=dataclasses.replace(
        data, train_limit=None, val_limit=None)))
    _, dataset = task.build_datasets()
    if len(task.classes) != len(loaded.classes):
        raise UsageError(
            f"the data has {len(task.classes)} classes, the model {len(loaded.classes)}"
        )
    if args.limit is not None:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    settings = inference_settings(loaded, mode=args.mode, ratios=args.scales, flip=args.flip)
    progress = _progress_bar(len(dataset))
    try:
        metrics = evaluate_segmenter(loaded, dataset, settings, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"mIoU {metrics['mIoU']:.2f}%  mAcc {metrics['mAcc']:.2f}%  "
              f"aAcc {metrics['aAcc']:.2f}%  ({metrics['images']} images)")
    return 0
