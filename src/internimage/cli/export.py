"""``internimage export``: a classifier, backbone or segmentation model as an ONNX file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from internimage.cli.arguments import positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``export``."""
    parser = subparsers.add_parser(
        "export",
        help="write a model as an ONNX graph of standard operators",
        description=(
            "Export a classifier, its backbone (--features-only) or a segmentation model to ONNX. "
            "SOURCE is a model name (a variant such as internimage_t, or a released "
            "segmentation model upernet_*), with random weights unless --pretrained asks for "
            "the released ones, or a checkpoint file (a training checkpoint of this library, or "
            "plain classifier weights with --model). DCNv3 is written with ONNX's GridSample, so "
            "the graph runs in any ONNX runtime; before the file is written it is checked in "
            "onnxruntime against PyTorch. Detectors are refused: Mask R-CNN's post-processing "
            "has no plain ONNX graph. Needs pip install 'internimage[onnx]'."
        ),
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="model name (e.g. internimage_t) or checkpoint file")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                        help="the .onnx file to write")
    parser.add_argument("--pretrained", action="store_true",
                        help="use the released weights of the model named by SOURCE")
    parser.add_argument("--model", help="model name of a plain weights file")
    parser.add_argument("--ema", action="store_true",
                        help="export the EMA weights of a training checkpoint")
    parser.add_argument("--features-only", action="store_true",
                        help="export a classifier's backbone: its four stage maps as outputs")
    parser.add_argument("--input-size", type=positive_int, nargs="+", metavar="S",
                        help="image size: S for S x S, or H W (default: the model's)")
    parser.add_argument("--batch", type=positive_int, default=1,
                        help="batch of the check input (default: %(default)s)")
    parser.add_argument("--opset", type=positive_int,
                        help="ONNX opset, 18 or more (default: 18)")
    parser.add_argument("--static-batch", action="store_true",
                        help="fix the batch size in the graph (default: dynamic)")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="make the image height and width dynamic too")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    parser.set_defaults(func=run)


def _image_size(args: argparse.Namespace) -> tuple[int, int] | None:
    """``(H, W)`` from --input-size, None for the model's own size."""
    from internimage.errors import UsageError

    if args.input_size is None:
        return None
    if len(args.input_size) > 2:
        raise UsageError(f"--input-size takes S or H W, got {len(args.input_size)} numbers")
    return args.input_size[0], args.input_size[-1]


def _load(args: argparse.Namespace) -> tuple[Any, int]:
    """The model that SOURCE names, on the CPU, and its native image side."""
    from internimage.errors import MissingFileError, UsageError
    from internimage.export.onnx import detector_error
    from internimage.models import VARIANTS, InternImageFeatures

    source: str = args.source
    if Path(source).is_file():
        if args.pretrained:
            raise UsageError("--pretrained is for model names; a checkpoint brings its weights")
        return _load_checkpoint(args)
    if args.ema or args.model is not None:
        raise UsageError("--ema and --model are for checkpoint files, not model names")
    from internimage.catalog.table import training_task

    task = training_task(source)
    if task == "detection":
        # Refused before anything is built or downloaded.
        raise detector_error()
    if task == "segmentation":
        if args.features_only:
            raise UsageError("--features-only is for classifiers; SOURCE is a segmentation model")
        return _load_segmentation(source=source, pretrained=args.pretrained)
    if source in VARIANTS:
        from internimage.classification.inference import load_classifier
        from internimage.models import create_model

        if args.pretrained:
            loaded = load_classifier(pretrained=source)
            model, size = loaded.model, loaded.image_size
        else:
            model, size = create_model(source), VARIANTS[source].image_size
        return (InternImageFeatures(model) if args.features_only else model), size
    if Path(source).exists():
        raise UsageError(f"{source} is a folder; give a checkpoint file or a model name")
    raise MissingFileError(
        f"{source} is neither a model name (e.g. internimage_t or "
        f"upernet_internimage_t_512_160k_ade20k) "
        f"nor an existing checkpoint file"
    )


def _load_checkpoint(args: argparse.Namespace) -> tuple[Any, int]:
    """A classifier (its backbone with --features-only) or segmentation model from a file."""
    from internimage.classification.inference import load_classifier
    from internimage.cli.evaluate import source_task
    from internimage.errors import UsageError
    from internimage.export.onnx import detector_error
    from internimage.models import InternImageFeatures

    path = Path(args.source)
    # A --model names the variant of plain classifier weights: never a dense model.
    task = "classification" if args.model is not None else source_task(path, None)
    if task == "detection":
        raise detector_error()
    if task == "segmentation":
        if args.features_only:
            raise UsageError("--features-only is for classifiers; SOURCE is a segmentation model")
        return _load_segmentation(checkpoint=path, use_ema=args.ema)
    loaded = load_classifier(checkpoint=path, model_name=args.model, use_ema=args.ema)
    model = loaded.model
    return (InternImageFeatures(model) if args.features_only else model), loaded.image_size


def _load_segmentation(
    *, source: str | None = None, pretrained: bool = False, checkpoint: Path | None = None,
    use_ema: bool = False,
) -> tuple[Any, int]:
    """A segmentation model by released name (random weights unless ``pretrained``) or
    checkpoint, and its training crop side."""
    from internimage.train.tasks import import_task

    import_task("segmentation")  # names the missing extra in one line
    from internimage.errors import UsageError
    from internimage.segmentation import (
        create_segmentation_model,
        find_segmentation_release,
        load_segmenter,
    )

    if checkpoint is not None:
        loaded = load_segmenter(checkpoint=checkpoint, use_ema=use_ema)
        return loaded.model, loaded.crop_size
    assert source is not None
    if pretrained:
        loaded = load_segmenter(pretrained=source)
        return loaded.model, loaded.crop_size
    release = find_segmentation_release(source)
    if not isinstance(release.crop, tuple):
        raise UsageError(f"{release.name} has no training crop to export at")
    return create_segmentation_model(release.name), max(release.crop)


def run(args: argparse.Namespace) -> int:
    """Export and print one line: the file, its opset and its agreement with PyTorch."""
    from internimage.errors import RunExistsError

    if args.output.exists() and not args.overwrite:
        raise RunExistsError(f"{args.output} exists; pass --overwrite to replace it")
    # A missing onnx package is named before any model is built or downloaded.
    from internimage.export.onnx import export_onnx, require_onnx

    require_onnx()
    size = _image_size(args)
    model, native = _load(args)
    height, width = size or (native, native)
    report = export_onnx(
        model, args.output, input_shape=(args.batch, 3, height, width),
        dynamic_batch=not args.static_batch, dynamic_size=args.dynamic_size, opset=args.opset,
    )
    symbolic = report.dynamic_axes.get(report.input_name, {})
    dims = ", ".join(symbolic.get(axis, str(size)) for axis, size in enumerate(report.input_shape))
    print(
        f"{report.path}: ONNX opset {report.opset}, input {report.input_name} [{dims}], outputs "
        f"{', '.join(report.output_names)}; onnxruntime matches PyTorch to "
        f"{report.max_abs_error:.1e} (max abs error)"
    )
    return 0
