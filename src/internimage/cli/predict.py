"""``internimage predict``: the most likely classes of image files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from internimage.cli.arguments import positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="classify image files",
        description="Print the top-k classes and probabilities of each image.",
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
    parser.set_defaults(func=run)


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

    from internimage.data.images import to_rgb8
    from internimage.train.distributed import resolve_device
    from internimage.train.evaluate import prepare_batch
    from internimage.train.inference import load_classifier

    device = resolve_device(args.device, 0)
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
