"""``internimage info``: the variant table, or the details of one variant."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from internimage.cli.arguments import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``info`` sub-command."""
    parser = subparsers.add_parser(
        "info",
        help="list the InternImage variants or describe one",
        description="Parameters, MACs (at the native image size), image size and ImageNet top-1 "
        "of every variant, or the full settings of one.",
    )
    parser.add_argument("name", nargs="?", help="variant to describe, e.g. internimage_t")
    parser.add_argument(
        "--image-size", type=positive_int, default=None,
        help="count MACs at this size (default: native)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def variant_summary(name: str, image_size: int | None = None) -> dict[str, Any]:
    """Parameters, state-dict entries and MACs of a variant, computed on the meta device."""
    import torch

    from internimage.models import VARIANTS, count_macs, create_model

    info = VARIANTS[name]
    size = image_size or info.image_size
    with torch.device("meta"):
        model = create_model(name)
    return {
        "name": name,
        "params": sum(p.numel() for p in model.parameters()),
        "state_dict_entries": len(model.state_dict()),
        "image_size": size,
        "macs": count_macs(model, (1, 3, size, size)),
        "top1": info.top1,
        "pretrained": info.pretrained,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    width = max(20, *(len(row["name"]) for row in rows))
    header = (f"{'variant':<{width}} {'params':>10} {'MACs':>10} {'image':>6} {'top-1':>6}  "
              f"weights")
    lines = [header, "-" * len(header)]
    for row in rows:
        top1 = f"{row['top1']:.1f}" if row["top1"] is not None else "-"
        lines.append(
            f"{row['name']:<{width}} {row['params'] / 1e6:>9.2f}M {row['macs'] / 1e9:>9.2f}G "
            f"{row['image_size']:>6} {top1:>6}  {row['pretrained'] or '-'}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the table or one variant's details; returns the exit code."""
    from internimage.errors import UsageError
    from internimage.models import PRETRAINED, VARIANTS

    if args.name is None:
        rows = [variant_summary(name, args.image_size) for name in VARIANTS]
        print(json.dumps(rows, indent=1) if args.json else _table(rows))
        return 0
    if args.name not in VARIANTS:
        raise UsageError(f"unknown variant {args.name!r}; available: {', '.join(VARIANTS)}")
    details = variant_summary(args.name, args.image_size)
    details["config"] = dataclasses.asdict(VARIANTS[args.name].config)
    weights = PRETRAINED.get(args.name)
    if weights is not None:
        details["weights"] = {**dataclasses.asdict(weights), "url": weights.url}
    if args.json:
        print(json.dumps(details, indent=1))
        return 0
    print(_table([details]))
    print("\nsettings:")
    for key, value in details["config"].items():
        print(f"  {key:<28} {value}")
    if weights is not None:
        print("\nreleased weights:")
        for key, value in details["weights"].items():
            print(f"  {key:<28} {value}")
    return 0
