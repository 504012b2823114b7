"""``internimage bench``: operator and model throughput on this machine, by path, dtype and
backend, printed as one table at the end."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from internimage.cli.arguments import positive_int


def _names(text: str) -> list[str]:
    """A comma-separated list of names."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``bench`` sub-command."""
    parser = subparsers.add_parser(
        "bench",
        help="measure operator and model throughput on this machine",
        description="Times the model's operator alone (DCNv3, or DCNv4 for FlashInternImage, at "
        "the model's first-stage shape) and a "
        "whole model on random inputs for each chosen path (eager, compile: torch.compile of "
        "the whole model, onnxruntime: the exported graph), dtype and DCNv3 backend, and "
        "prints one table: images/s, milliseconds per call, the model's GFLOP/s and its share "
        "of this machine's float32 matmul rate, and the output's difference from float32 "
        "eager. The first compiled call compiles; that time shows as setup.",
    )
    parser.add_argument("--model", default="internimage_t",
                        help="registered model to time (random weights; default: "
                        "internimage_t)")
    parser.add_argument("--what", choices=("model", "operator", "both"), default="both",
                        help="what to time (default: both)")
    parser.add_argument("--paths", type=_names, default=["eager"],
                        help="comma-separated: eager, compile, onnxruntime (default: eager)")
    parser.add_argument("--dtypes", type=_names, default=["float32"],
                        help="comma-separated: float32, bfloat16 (default: float32)")
    parser.add_argument("--backends", type=_names, default=None,
                        help="comma-separated DCNv3 backends: numba, triton, reference "
                        "(default: the device's fast one)")
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8],
                        help="batch sizes of the model (default: 1 8; the operator uses the "
                        "largest)")
    parser.add_argument("--image-size", type=positive_int, default=224,
                        help="input side of the model (default: 224)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--warmup", type=positive_int, default=1,
                        help="untimed calls after the first (default: 1)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed calls; the fastest counts (default: 3)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the measurements to this JSON file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --json file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure and print the table; returns the exit code."""
    import torch

    from internimage.bench import benchmark_model, benchmark_operator, format_table
    from internimage.errors import ConfigError, DeviceError, UsageError
    from internimage.files import atomic_write_text
    from internimage.models import VARIANTS

    if args.json is not None and args.json.exists() and not args.overwrite:
        raise UsageError(f"{args.json} exists; pass --overwrite to replace it")
    if args.what != "operator" and args.model not in VARIANTS:
        raise UsageError(f"unknown model {args.model!r}; available: {', '.join(VARIANTS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ConfigError(f"--device {args.device!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is visible")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    common = dict(paths=args.paths, dtypes=args.dtypes, backends=args.backends, device=device,
                  warmup=args.warmup, repeats=args.repeats, progress=progress)
    measurements = []
    if args.what in ("operator", "both"):
        # The operator of the model's family (DCNv4 for FlashInternImage), at its first stage.
        config = VARIANTS[args.model].config if args.model in VARIANTS else None
        operator = "dcnv4" if config is not None and config.core_op == "DCNv4" else "dcnv3"
        shape = ({} if config is None else
                 {"channels": config.channels, "group": config.stage_groups[0]})
        measurements += benchmark_operator(batch=max(args.batch), operator=operator, **shape,
                                           **common)
    if args.what in ("model", "both"):
        measurements += benchmark_model(args.model, batches=args.batch,
                                        image_size=args.image_size, **common)
    print(format_table(measurements))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps([m.as_dict() for m in measurements], indent=1))
        print(f"measurements written to {args.json}")
    return 0
