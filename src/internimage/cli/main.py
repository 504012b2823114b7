"""The ``internimage`` command: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines ``add_parser(subparsers) -> None`` which registers its sub-command and sets
# ``func`` (taking the parsed namespace, returning an exit code) as a default.
_COMMAND_MODULES = ("info", "train", "evaluate", "predict")


def build_parser() -> argparse.ArgumentParser:
    """Parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="internimage",
        description="InternImage models: inspect, train, evaluate and predict.",
    )
    from internimage import __version__

    parser.add_argument("--version", action="version", version=f"internimage {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"internimage.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"internimage.cli.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
