"""``internimage eval``: top-1/top-5 accuracy of a classifier, mIoU of a segmentation model, COCO
box and mask AP of a detector."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from internimage.cli.arguments import non_negative_int, positive_floats, positive_int
from internimage.train.config import all_datasets, task_settings

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="measure top-1/top-5 accuracy, mIoU or COCO AP",
        description=(
            "Evaluate a classifier, a segmentation model or a detector. A training checkpoint "
            "brings its model, classes, preprocessing and dataset; released weights "
            "(--pretrained) and plain weight files need --data and --data-root (for "
            "classifiers: class sub-folders in label order, e.g. the ImageNet validation set "
            "arranged by synset; for the released ADE20K models: --data ade20k --data-root DIR; "
            "for the released COCO models: --data coco --data-root DIR with val2017/ and "
            "annotations/). Segmentation follows mmseg's test procedure: short side resized to "
            "the training crop, whole image or sliding window, optionally several scales and "
            "flips. Detection reports pycocotools' box and mask AP."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="training checkpoint or weights file")
    source.add_argument("--pretrained", metavar="MODEL", help="released weights of MODEL")
    parser.add_argument("--model", help="model name of a plain weights file")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("--data", choices=list(all_datasets()),
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
    parser.add_argument("--task", choices=["classification", "segmentation", "detection"],
                        help="what the model does (default: what the checkpoint or released "
                             "model is; a different value is refused)")
    segmentation = parser.add_argument_group("segmentation")
    segmentation.add_argument("--mode", choices=["whole", "slide"], default="whole",
                              help="whole-image or sliding-window inference (default: "
                                   "%(default)s)")
    segmentation.add_argument("--scales", type=positive_floats, default=(1.0,), metavar="R,R,...",
                              help="test scales relative to the training crop, e.g. "
                                   "0.5,0.75,1,1.25,1.5,1.75 (default: 1)")
    segmentation.add_argument("--flip", action="store_true",
                              help="also predict the mirrored images and average")
    detection = parser.add_argument_group("detection")
    detection.add_argument("--output", type=Path, metavar="FILE",
                           help="also write the detections in COCO's results format (JSON)")
    detection.add_argument("--overwrite", action="store_true",
                           help="replace an existing --output file")
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


def source_task(checkpoint: Path | None, pretrained: str | None) -> str:
    """The task of the model that ``--checkpoint``/``--pretrained`` name: ``classification``,
    ``segmentation`` or ``detection``."""
    if pretrained is not None:
        from internimage.catalog.table import training_task

        # Unknown names are classifiers here: the classifier's loader names the choices.
        return training_task(pretrained) or "classification"
    from internimage.models.checkpoint import read_checkpoint, safetensors_header

    assert checkpoint is not None
    if safetensors_header(checkpoint) is not None:
        # Tensors only, never the task: plain classifier weights. The loader that follows
        # reads the file (and reports it when it is missing or not safetensors).
        return "classification"
    # Mapped, not read: the loader that follows reads the weights.
    task = read_checkpoint(checkpoint, mmap=True).get("task")
    return task if task in ("segmentation", "detection") else "classification"


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics; returns the exit code."""
    import json

    import torch
    from torch.utils.data import DataLoader, Subset

    from internimage.classification.data import (
        ImageFolderDataset,
        collate_skipping_unreadable,
        fashion_mnist_dataset,
    )
    from internimage.classification.evaluate import evaluate
    from internimage.classification.inference import load_classifier
    from internimage.data.fashion_mnist import FASHION_MNIST_CLASSES
    from internimage.errors import DataError, UsageError
    from internimage.train.distributed import resolve_device

    device = resolve_device(args.device, 0)
    # A --model names the variant of plain classifier weights: never a dense model.
    task = "classification" if args.model is not None else source_task(args.checkpoint,
                                                                         args.pretrained)
    if args.task is not None and args.task != task:
        raise UsageError(f"--task {args.task}: the model given is a {task} model")
    if task != "classification":
        from internimage.train.tasks import import_task

        import_task(task)  # names the missing extra in one line
    if task == "segmentation":
        return _run_segmentation(args, device)
    if task == "detection":
        return _run_detection(args, device)
    if args.output is not None:
        raise UsageError("--output writes detections; this is a classifier")
    if args.data is not None and args.data not in task_settings("classification").DATASETS:
        raise UsageError(f"--data {args.data} is not a classification dataset; this is a "
                         "classifier")
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


def _validation_set(args: argparse.Namespace, config: Any, preset: str) -> tuple[Any, Any]:
    """The task and validation set of a dense model: its checkpoint's data (``config``), with
    ``--data``/``--data-root`` on top; for released weights (``config`` None) the data named
    by those flags, read with ``preset``'s settings."""
    import dataclasses

    from internimage.errors import UsageError
    from internimage.train.config import PRESETS
    from internimage.train.tasks import create_task

    if config is None:
        if args.data is None or args.data_root is None:
            example = PRESETS[preset].data.dataset
            raise UsageError(f"say which data to evaluate on, e.g. --data {example} "
                             "--data-root DIR")
        config = PRESETS[preset]
    data = config.data
    if args.data is not None:
        data = dataclasses.replace(data, dataset=args.data, root=args.data_root)
    elif args.data_root is not None:
        data = dataclasses.replace(data, root=args.data_root)
    task = create_task(dataclasses.replace(config, data=dataclasses.replace(
        data, train_limit=None, val_limit=None)))
    return task, task.build_validation_set()


def _run_segmentation(args: argparse.Namespace, device: Any) -> int:
    """Evaluate a segmentation checkpoint or released model; prints mIoU, mAcc and aAcc."""
    import json

    from torch.utils.data import Subset

    from internimage.errors import UsageError
    from internimage.segmentation.evaluate import evaluate_segmenter, inference_settings
    from internimage.segmentation.loading import load_segmenter

    datasets = task_settings("segmentation").DATASETS
    if args.data is not None and args.data not in datasets:
        raise UsageError(f"--data {args.data} is not a segmentation dataset; this is a "
                         f"segmentation model ({', '.join(datasets)})")
    if args.output is not None:
        raise UsageError("--output writes detections; this is a segmentation model")
    if args.model is not None or args.image_size is not None:
        raise UsageError("--model and --image-size are for classifiers; a segmentation "
                         "checkpoint brings its model and crop size")
    loaded = load_segmenter(checkpoint=args.checkpoint, pretrained=args.pretrained,
                            use_ema=args.ema, device=device)
    task, dataset = _validation_set(args, loaded.config, "ade20k")
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


def _run_detection(args: argparse.Namespace, device: Any) -> int:
    """Evaluate a detection checkpoint or released model; prints COCO box and mask AP."""
    import json

    import torch
    from torch.utils.data import DataLoader, Subset

    from internimage.detection.data import collate_detection
    from internimage.detection.loading import load_detector
    from internimage.detection.task import detect, evaluate_coco
    from internimage.errors import RunExistsError, UsageError
    from internimage.files import atomic_write_text

    datasets = task_settings("detection").DATASETS
    if args.data is not None and args.data not in datasets:
        raise UsageError(f"--data {args.data} is not a detection dataset; this is a detector "
                         f"({', '.join(datasets)})")
    if args.image_size is not None:
        raise UsageError("--image-size is for classifiers; a detector brings its image sizes")
    if args.output is not None and args.output.exists() and not args.overwrite:
        raise RunExistsError(f"{args.output} exists; pass --overwrite to replace it")
    loaded = load_detector(checkpoint=args.checkpoint, pretrained=args.pretrained,
                           use_ema=args.ema, device=device)
    task, dataset = _validation_set(args, loaded.config, "coco-1x")
    if tuple(task.category_ids) != loaded.category_ids:  # type: ignore[attr-defined]
        raise UsageError(
            f"the data's categories {list(task.category_ids)} are not the model's "  # type: ignore
            f"{list(loaded.category_ids)}"
        )
    ground_truth = dataset.coco  # type: ignore[attr-defined]
    if args.limit is not None:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=min(args.batch_size, 8), shuffle=False,
                        num_workers=args.workers, collate_fn=collate_detection)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    progress = _progress_bar(len(dataset))
    try:
        image_ids, results = detect(loaded.model, loader, device, amp_dtype,
                                    loaded.category_ids, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    metrics: dict[str, Any] = evaluate_coco(ground_truth, results, image_ids)
    metrics["images"] = len(image_ids)
    metrics["detections"] = len(results)
    if args.output is not None:
        atomic_write_text(args.output, json.dumps(results) + "\n")
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"box AP {metrics['bbox_AP']:.2f} (AP50 {metrics['bbox_AP50']:.2f}, AP75 "
              f"{metrics['bbox_AP75']:.2f})  mask AP {metrics['segm_AP']:.2f} (AP50 "
              f"{metrics['segm_AP50']:.2f}, AP75 {metrics['segm_AP75']:.2f})  "
              f"({metrics['images']} images)")
    return 0
