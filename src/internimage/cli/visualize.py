"""``internimage visualize``: where the DCNv3 blocks of a classifier sample for chosen pixels of
an image (the paper's Fig. 5), drawn as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from internimage.cli.arguments import positive_int

__all__ = ["add_parser", "parse_point", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``visualize``."""
    parser = subparsers.add_parser(
        "visualize",
        help="draw where DCNv3 samples for pixels of an image (sampling-location maps)",
        description=(
            "Runs a classifier on IMAGE and draws, over the image, the DCNv3 sampling locations "
            "of the last block of every stage for each query pixel: one panel per stage, one "
            "colour per group, marker size by mask weight (the paper's Fig. 5). IMAGE is an "
            "image file or a bundled demo photo, demo:astronaut, demo:chelsea or demo:coffee. "
            "The network sees the whole image (no crop), resized so that its shorter side is "
            "--image-size; points and the picture are in the pixels of the original image."
        ),
    )
    parser.add_argument("image", metavar="IMAGE",
                        help="image file, or demo:NAME for a bundled photo (astronaut, chelsea, "
                             "coffee)")
    parser.add_argument("--model", metavar="NAME",
                        help="released weights of model NAME (through the Hugging Face cache); "
                             "with --checkpoint: the model of a plain weights file")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="training checkpoint or weights file of a classifier")
    parser.add_argument("--ema", action="store_true",
                        help="use the EMA weights of a training checkpoint")
    parser.add_argument("--points", nargs="+", type=parse_point, metavar="X,Y",
                        help="query pixels in the image's pixels, x to the right and y down "
                             "from the top-left pixel at 0,0 (default: the image centre)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE.png",
                        help="where to write the PNG (default: <image name>_sampling.png in "
                             "the current folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output file if it exists")
    parser.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                        help="shorter side of the network input in pixels (default: the "
                             "model's evaluation size)")
    parser.add_argument("--blocks", choices=["last", "all"], default="last",
                        help="the last block of every stage, or all blocks (a row per stage) "
                             "(default: %(default)s)")
    parser.add_argument("--alignment", choices=["conv", "cell"], default="conv",
                        help="feature pixel x_f at input pixel x_f * stride (conv: where the "
                             "stride-2 convolutions centre it) or (x_f + 0.5) * stride - 0.5 "
                             "(cell) (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.set_defaults(func=run)


def parse_point(text: str) -> tuple[float, float]:
    """``"x,y"`` -> ``(x, y)``, two finite numbers."""
    import math

    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a point X,Y such as 120,80, got {text!r}"
        ) from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"expected finite coordinates, got {text!r}")
    return x, y


def _image_path(text: str) -> Path:
    """The file IMAGE names: a demo photo for ``demo:NAME``, else the path itself."""
    from internimage.data.photos import DEMO_PREFIX, demo_photo
    from internimage.errors import MissingFileError

    if text.startswith(DEMO_PREFIX):
        return demo_photo(text)
    path = Path(text)
    if not path.is_file():
        raise MissingFileError(
            f"image {path} does not exist (or is not a file); for a bundled photo write "
            f"demo:astronaut, demo:chelsea or demo:coffee"
        )
    return path


def _output_path(args: argparse.Namespace, image: str) -> Path:
    """``--output`` or ``<image stem>_sampling.png``; refused when it exists without
    ``--overwrite`` or does not end in .png."""
    from internimage.errors import RunExistsError, UsageError

    if args.output is not None:
        output = args.output
    else:
        stem = image.split(":", 1)[1] if image.startswith("demo:") else Path(image).stem
        output = Path(f"{stem}_sampling.png")
    if output.suffix.lower() != ".png":
        raise UsageError(f"the sampling map is written as PNG; {output} should end in .png")
    if output.is_dir():
        raise UsageError(f"{output} is a folder; give a file name ending in .png")
    if output.exists() and not args.overwrite:
        raise RunExistsError(f"{output} exists; choose another --output or pass --overwrite")
    return output


def _network_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``short`` and the aspect ratio kept, as the
    evaluation resize rounds (the longer side truncated)."""
    if width <= height:
        return max(1, int(short * height / width)), short
    return short, max(1, int(short * width / height))


def run(args: argparse.Namespace) -> int:
    """Draw the sampling maps and print the output path; returns 0."""
    import numpy as np
    import torch
    from PIL import Image

    from internimage.analysis.sampling import sampling_locations, save_sampling_maps
    from internimage.classification.inference import load_classifier
    from internimage.cli.evaluate import source_task
    from internimage.data.images import read_image
    from internimage.data.transforms import normalize, to_float_images
    from internimage.errors import UsageError
    from internimage.train.distributed import resolve_device

    if args.model is None and args.checkpoint is None:
        raise UsageError("say which model to look at: --model NAME (released weights) or "
                         "--checkpoint FILE")
    if args.ema and args.checkpoint is None:
        raise UsageError("--ema needs --checkpoint (a training checkpoint with EMA weights)")
    # Everything about the arguments and files is checked before the model is loaded.
    path = _image_path(args.image)
    output = _output_path(args, args.image)
    pixels = read_image(path)  # uint8 [H, W, 3]; any mode, alpha dropped
    height, width = pixels.shape[:2]
    points = args.points if args.points else [((width - 1) / 2, (height - 1) / 2)]
    for x, y in points:
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise UsageError(
                f"point {x:g},{y:g} is outside the {width}x{height} image {args.image} "
                f"(x in 0..{width - 1}, y in 0..{height - 1})"
            )
    if args.checkpoint is not None:
        task = source_task(args.checkpoint, None)
        if task != "classification":
            raise UsageError(
                f"{args.checkpoint} is a {task} checkpoint; visualize takes classifiers "
                f"(a classification checkpoint or --model NAME)"
            )
    device = resolve_device(args.device, 0)
    loaded = load_classifier(
        checkpoint=args.checkpoint,
        pretrained=args.model if args.checkpoint is None else None,
        model_name=args.model if args.checkpoint is not None else None,
        use_ema=args.ema, device=device, image_size=args.image_size,
    )

    picture = Image.fromarray(pixels)
    if loaded.grayscale:
        # Grayscale-trained models saw one channel repeated three times.
        picture = picture.convert("L").convert("RGB")
    net_h, net_w = _network_size(height, width, loaded.image_size)
    resample = getattr(Image.Resampling, loaded.interpolation.upper(), Image.Resampling.BICUBIC)
    resized = np.asarray(picture.resize((net_w, net_h), resample=resample))
    batch = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].to(device)
    x = normalize(to_float_images(batch), loaded.mean, loaded.std)  # [1, 3, net_h, net_w]
    # Query pixels from the original image to the network input: pixel edges onto pixel edges.
    scale_x, scale_y = net_w / width, net_h / height
    queries = [((px + 0.5) * scale_x - 0.5, (py + 0.5) * scale_y - 0.5) for px, py in points]
    maps = sampling_locations(loaded.model, x, queries, blocks=args.blocks,
                              alignment=args.alignment)
    maps = [m.rescaled((height, width)) for m in maps]
    name = args.checkpoint.name if args.checkpoint is not None else args.model
    title = f"{name} on {args.image} (network input {net_w}x{net_h})"
    save_sampling_maps(output, np.asarray(picture), maps, title=title)
    print(output)
    return 0
