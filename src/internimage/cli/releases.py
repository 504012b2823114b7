"""``internimage list``: every released checkpoint, and whether this library loads it."""

from __future__ import annotations

import argparse
import dataclasses
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``list`` sub-command."""
    from internimage.catalog.table import FAMILIES, METHODS, TASKS

    parser = subparsers.add_parser(
        "list",
        help="list the released checkpoints",
        description="Every checkpoint released for InternImage and FlashInternImage: its name "
        "(also accepted: the upstream file name), task, method, class list, input size, "
        "published metrics, and whether this library builds and loads it yet.",
    )
    parser.add_argument("pattern", nargs="?", default="*",
                        help="shell-style pattern over the names, e.g. '*ade20k*'")
    parser.add_argument("--family", choices=FAMILIES)
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--method", choices=tuple(METHODS))
    parser.add_argument("--classes", metavar="LIST", help="class list, e.g. coco or ade20k")
    built = parser.add_mutually_exclusive_group()
    built.add_argument("--built", dest="buildable", action="store_const", const=True,
                       help="only those this library loads")
    built.add_argument("--not-built", dest="buildable", action="store_const", const=False,
                       help="only those it does not load yet")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.set_defaults(func=run)


def _text(value: str | None, width: int) -> str:
    value = value or "-"
    return value if len(value) <= width else value[: width - 1] + "~"


def run(args: argparse.Namespace) -> int:
    """Print the table; returns the exit code."""
    from internimage.catalog.table import METHODS, RELEASES, list_pretrained

    names = list_pretrained(args.pattern, family=args.family, task=args.task,
                            method=args.method, classes=args.classes, buildable=args.buildable)
    releases = [RELEASES[name] for name in names]
    if args.json:
        rows = [{**dataclasses.asdict(r), "metrics": dict(r.metrics),
                 "backbone": dict(r.backbone), "url": r.url, "buildable": r.buildable}
                for r in releases]
        print(json.dumps(rows, indent=1))
        return 0
    header = (f"{'name':<62} {'method':<18} {'classes':<24} {'size':>9}  "
              f"{'published':<30} loads")
    lines = [header, "-" * len(header)]
    for r in releases:
        lines.append(
            f"{r.name:<62} {METHODS[r.method]:<18} "
            f"{_text(f'{r.classes} ({r.num_classes})', 24):<24} {r.describe_size():>9}  "
            f"{_text(r.describe_metrics(), 30):<30} {'yes' if r.buildable else 'not yet'}"
        )
    built = sum(r.buildable for r in releases)
    lines.append(f"{len(releases)} released checkpoints, {built} load in this library")
    print("\n".join(lines))
    return 0
