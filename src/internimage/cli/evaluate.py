"""``internimage eval``: top-1 / top-5 accuracy of a checkpoint or of released weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from internimage.cli.arguments import non_negative_int, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="measure top-1/top-5 accuracy",
        description=(
            "Evaluate a classifier. A training checkpoint brings its model, classes, "
            "preprocessing and dataset; released weights (--pretrained) and plain weight files "
            "need --data folder --data-root DIR (class sub-folders in label order, e.g. the "
            "ImageNet validation set arranged by synset)."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="training checkpoint or weights file")
    source.add_argument("--pretrained", metavar="MODEL", help="released weights of MODEL")
    parser.add_argument("--model", help="model name of a plain weights file")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("--data", choices=["fashion-mnist-subset", "fashion-mnist", "folder"],
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
    parser.set_defaults(func=run)


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
    progress = None
    if sys.stderr.isatty():  # a bar in a log file is noise
        try:
            from tqdm import tqdm

            progress = tqdm(total=len(dataset), unit="img", desc="evaluating", mininterval=1.0)
        except ModuleNotFoundError:
            pass
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
