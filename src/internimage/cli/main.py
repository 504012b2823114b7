"""The ``internimage`` command: one sub-command per module in this package.

The command line's contract (also in the README):

- A user error (arguments, settings, data, files, devices, network) prints one line on standard
  error, ``internimage: error: <what is wrong and what to do>``, and exits with 2 for usage
  (arguments and settings) and 1 otherwise.
- An unexpected error is a bug: its traceback is printed, then one line saying so; exit 1.
- ``--debug`` prints the traceback of user errors too.
- Ctrl-C stops the command (and its worker processes) and exits with 130, without a traceback.
- In a distributed run an error that every process meets is printed once, by rank 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from internimage.console import ERROR_PREFIX, install_warning_format, one_line

__all__ = ["EXIT_INTERRUPTED", "build_parser", "main"]

# Each module defines ``add_parser(subparsers) -> None`` which registers its sub-command and sets
# ``func`` (taking the parsed namespace, returning an exit code) as a default.
_COMMAND_MODULES = ("info", "releases", "verify", "train", "evaluate", "predict", "visualize",
                    "bench", "export")

#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: argparse prints the whole usage block before the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{ERROR_PREFIX}{message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """Parser with every available sub-command."""
    parser = _Parser(
        prog="internimage",
        description="InternImage models: inspect, train, evaluate, predict, export to ONNX, draw "
        "sampling maps and measure throughput.",
    )
    from internimage import __version__

    parser.add_argument("--version", action="version", version=f"internimage {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of every error, user errors included")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"internimage.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"internimage.cli.{name}":
                continue
            raise
        module.add_parser(subparsers)
    for command in subparsers.choices.values():
        # Accepted after the sub-command too; SUPPRESS keeps the top-level value when absent.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="print the traceback of every error")
    return parser


def _secondary_rank() -> bool:
    """This process is a rank other than 0 of a distributed (torchrun) run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    from internimage.errors import UserError

    install_warning_format()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            traceback.print_exc()
        if not _secondary_rank():
            print(f"internimage: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of the output went away (``| head``): nothing more to say, to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UserError, OSError) as error:
        # OSErrors here are about the outside world: files, folders, permissions, disk space.
        if args.debug:
            traceback.print_exc()
        if not (_secondary_rank() and getattr(error, "same_on_every_process", True)):
            print(ERROR_PREFIX + one_line(error), file=sys.stderr)
        return int(getattr(error, "exit_code", 1))
    except Exception:
        traceback.print_exc()
        print(
            "internimage: internal error: this is a bug; please report it with the traceback "
            "above and the command that caused it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
