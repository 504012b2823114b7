"""``internimage predict``: the most likely classes of image files, their segmentation, or the
objects detected in them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from internimage.cli.arguments import positive_floats, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="classify, segment or detect objects in image files",
        description=(
            "A classifier prints the top-k classes and probabilities of each image. A "
            "segmentation model (a segmentation checkpoint or a released upernet_* model) "
            "writes OUTPUT_DIR/<image name>.png per image: the classes over the image beside "
            "it, with a legend; --json prints each class's share of the pixels. A detector (a "
            "detection checkpoint or a released mask_rcnn_* model) writes OUTPUT_DIR/<image "
            "name>.png with the objects' masks, boxes, classes and scores; --json prints the "
            "detections in COCO's results format (image_id: the image's position, from 1)."
        ),
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="training checkpoint or weights file")
    source.add_argument("--pretrained", metavar="MODEL", help="released weights of MODEL")
    parser.add_argument("--model", help="model name of a plain weights file")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights")
    parser.add_argument("--topk", type=positive_int, default=5,
                        help="classes printed per image (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    segmentation = parser.add_argument_group("segmentation and detection")
    segmentation.add_argument("--output-dir", type=Path, default=Path("predictions"),
                              help="folder of the drawn predictions (default: %(default)s)")
    segmentation.add_argument("--overwrite", action="store_true",
                              help="replace drawings that exist already")
    segmentation.add_argument("--mode", choices=["whole", "slide"], default="whole",
                              help="whole-image or sliding-window inference (default: "
                                   "%(default)s)")
    segmentation.add_argument("--scales", type=positive_floats, default=(1.0,),
                              metavar="R,R,...", help="test scales (default: 1)")
    segmentation.add_argument("--flip", action="store_true",
                              help="also predict the mirrored images and average")
    detection = parser.add_argument_group("detection")
    detection.add_argument("--score-threshold", type=_probability, default=0.5,
                           help="draw and list detections scoring at least this (default: "
                                "%(default)s)")
    parser.set_defaults(func=run)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Classify and print; returns 1 when an image could not be read, else 0.

    Results go to standard output (text, or JSON with ``--json``: one entry per image, with
    ``error`` instead of ``top`` for an image that could not be read); the errors also go to
    standard error, so that standard output stays valid JSON.
    """
    import json
    import sys

    import torch
    from PIL import Image, UnidentifiedImageError

    from internimage.classification.evaluate import prepare_batch
    from internimage.classification.inference import load_classifier
    from internimage.data.images import to_rgb8
    from internimage.train.distributed import resolve_device

    device = resolve_device(args.device, 0)
    from internimage.cli.evaluate import source_task

    # A --model names the variant of plain classifier weights: never a dense model.
    task = "classification" if args.model is not None else source_task(args.checkpoint,
                                                                         args.pretrained)
    if task != "classification":
        from internimage.train.tasks import import_task

        import_task(task)  # names the missing extra in one line
    if task == "segmentation":
        return _run_segmentation(args, device)
    if task == "detection":
        return _run_detection(args, device)
    loaded = load_classifier(
        checkpoint=args.checkpoint, pretrained=args.pretrained, model_name=args.model,
        use_ema=args.ema, device=device,
    )
    transform = loaded.transform()
    results: list[dict[str, Any]] = []
    status = 0
    for path in args.images:
        try:
            with Image.open(path) as image:
                image = to_rgb8(image)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            reason = error.strerror.lower() if isinstance(error, OSError) and error.strerror \
                else str(error)
            message = f"{path}: cannot read image ({reason})"
            print(f"internimage: error: {message}", file=sys.stderr)
            results.append({"image": str(path), "error": message})
            status = 1
            continue
        if loaded.grayscale:
            # Grayscale-trained models saw one channel repeated three times.
            image = image.convert("L").convert("RGB")
        x = prepare_batch(
            transform(image)[None], device, loaded.image_size, loaded.mean, loaded.std
        )
        with torch.no_grad():
            probs = loaded.model(x).float().softmax(dim=-1)[0]
        k = min(args.topk, probs.numel())
        top = probs.topk(k)
        entries = [
            {"class": loaded.classes[int(i)], "index": int(i), "probability": float(p)}
            for p, i in zip(top.values, top.indices, strict=True)
        ]
        results.append({"image": str(path), "top": entries})
        if not args.json:
            print(f"{path}:")
            for entry in entries:
                print(f"  {entry['probability'] * 100:6.2f}%  {entry['class']} ({entry['index']})")
    if args.json:
        print(json.dumps(results, indent=2))
    return status


def _run_segmentation(args: argparse.Namespace, device: Any) -> int:
    """Segment each image and draw it; returns 1 when an image could not be read."""
    import json
    import sys

    from internimage.data.images import read_image
    from internimage.draw import class_shares, save_prediction
    from internimage.errors import DataError, UsageError
    from internimage.segmentation.evaluate import inference_settings
    from internimage.segmentation.inference import predict_mask
    from internimage.segmentation.loading import load_segmenter

    if args.model is not None:
        raise UsageError("--model is for plain classifier weights")
    loaded = load_segmenter(checkpoint=args.checkpoint, pretrained=args.pretrained,
                            use_ema=args.ema, device=device)
    settings = inference_settings(loaded, mode=args.mode, ratios=args.scales, flip=args.flip)
    outputs = _drawing_paths(args)
    results: list[dict[str, Any]] = []
    status = 0
    for path, output in zip(args.images, outputs, strict=True):
        try:
            pixels = read_image(path)  # [H, W, 3] uint8
        except DataError as error:  # the message names the file
            message = str(error)
            print(f"internimage: error: {message}", file=sys.stderr)
            results.append({"image": str(path), "error": message})
            status = 1
            continue
        import torch

        mask = predict_mask(loaded.model, torch.from_numpy(pixels.copy()).permute(2, 0, 1),
                            settings)
        mask_array = mask.cpu().numpy()
        save_prediction(output, pixels, mask_array, loaded.classes,
                        ignore_index=loaded.ignore_index)
        shares = class_shares(mask_array, loaded.classes, ignore_index=loaded.ignore_index)
        results.append({"image": str(path), "output": str(output), "classes": shares})
        if not args.json:
            top = ", ".join(f"{entry['class']} {entry['share'] * 100:.1f}%"
                            for entry in shares[:5])
            print(f"{path}: {output} ({top})")
    if args.json:
        print(json.dumps(results, indent=2))
    return status


def _drawing_paths(args: argparse.Namespace) -> list[Path]:
    """``OUTPUT_DIR/<image stem>.png`` per image; refused when two collide or (without
    ``--overwrite``) when one exists."""
    from internimage.errors import RunExistsError, UsageError

    outputs = [args.output_dir / f"{path.stem}.png" for path in args.images]
    if len(set(outputs)) < len(outputs):
        raise UsageError("two images share a file name; their drawings would overwrite each "
                         "other (predict them in separate calls)")
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not args.overwrite:
        raise RunExistsError(
            f"{existing[0]} exists" + (f" (and {len(existing) - 1} more)" if len(existing) > 1
                                       else "")
            + "; choose another --output-dir or pass --overwrite"
        )
    return outputs


def _run_detection(args: argparse.Namespace, device: Any) -> int:
    """Detect objects in each image and draw them; returns 1 when an image could not be read."""
    import json
    import sys

    import torch

    from internimage.data.images import read_image
    from internimage.detection.loading import load_detector
    from internimage.detection.task import coco_results
    from internimage.draw import save_detections
    from internimage.errors import DataError, UsageError

    if args.model is not None:
        raise UsageError("--model is for plain classifier weights")
    loaded = load_detector(checkpoint=args.checkpoint, pretrained=args.pretrained,
                           use_ema=args.ema, device=device)
    outputs = _drawing_paths(args)
    entries: list[dict[str, Any]] = []
    status = 0
    for number, (path, output) in enumerate(zip(args.images, outputs, strict=True), start=1):
        try:
            pixels = read_image(path)  # [H, W, 3] uint8
        except DataError as error:  # the message names the file
            print(f"internimage: error: {error}", file=sys.stderr)
            entries.append({"image": str(path), "error": str(error)})
            status = 1
            continue
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(device).float() / 255
        with torch.no_grad():
            (found,) = loaded.model([image])
        keep = found["scores"] >= args.score_threshold
        found = {k: v[keep].cpu() for k, v in found.items()}
        save_detections(output, pixels, found["boxes"].numpy(), found["labels"].numpy(),
                        found["scores"].numpy(), loaded.classes,
                        masks=(found["masks"][:, 0] > 0.5).numpy())
        detections = coco_results([found], [number], loaded.category_ids)
        for detection, label in zip(detections, found["labels"].tolist(), strict=True):
            detection["class"] = loaded.classes[label - 1]
        entries.append({"image": str(path), "image_id": number, "output": str(output),
                        "detections": detections})
        if not args.json:
            listed = ", ".join(f"{d['class']} {d['score']:.2f}" for d in detections[:5])
            more = f" and {len(detections) - 5} more" if len(detections) > 5 else ""
            print(f"{path}: {output} ({len(detections)} objects"
                  + (f": {listed}{more}" if detections else "") + ")")
    if args.json:
        print(json.dumps(entries, indent=2))
    return status
