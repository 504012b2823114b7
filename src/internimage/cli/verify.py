"""``internimage verify NAME FILE``: will FILE load as the released model NAME?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Problems listed before the rest is counted: the report fits one screen.
_SHOWN = 20


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``verify`` sub-command."""
    parser = subparsers.add_parser(
        "verify",
        help="check that a checkpoint file will load, without reading its weights",
        description="Compare the keys and shapes of FILE (read from its header: a safetensors "
        "header, or a torch zip archive mapped, not read) with the model that the released "
        "checkpoint NAME builds, after the same key conversion a load applies. Exit 0 when the "
        "file loads strictly, 1 when it does not (each missing, unexpected or wrongly shaped "
        "key is listed).",
    )
    parser.add_argument("name", metavar="NAME",
                        help="released checkpoint name or upstream file name (internimage list)")
    parser.add_argument("file", metavar="FILE", type=Path, help="the checkpoint file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report; returns 0 when the file loads strictly, 1 otherwise."""
    from internimage.catalog import build_release, checkpoint_shapes, find_release
    from internimage.catalog.verify import verify_checkpoint

    release = find_release(args.name)
    if not release.buildable:
        build_release(release)  # raises: not built yet, before the file is read
    shapes = checkpoint_shapes(args.file)
    problems = verify_checkpoint(release, shapes)
    if args.json:
        print(json.dumps({"name": release.name, "file": str(args.file), "tensors": len(shapes),
                          "loads": not problems, "problems": problems}, indent=1))
        return 1 if problems else 0
    if not problems:
        print(f"{args.file}: loads as {release.name} ({len(shapes)} tensors, every key and "
              f"shape matches)")
        return 0
    lines = [f"{args.file}: does not load as {release.name}: {len(problems)} problem(s) "
             f"among {len(shapes)} tensors"]
    lines += [f"  {problem}" for problem in problems[:_SHOWN]]
    if len(problems) > _SHOWN:
        lines.append(f"  ... and {len(problems) - _SHOWN} more (--json lists them all)")
    print("\n".join(lines))
    return 1
