"""The ``internimage`` command line: ``train``, ``eval``, ``predict`` and ``info``."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it tells the reader something.

    argparse's own formatter appends ``(default: None)`` to options that are simply unset,
    ``(default: False)`` to flags, ``(default: [])`` to repeatable options, and a second default
    after help text that already names one.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        # Identity tests: a default of 0 equals False and is worth showing.
        unset = action.default is None or action.default is False or action.default == []
        if text is None or unset or "default" in text:
            return text
        return super()._get_help_string(action)
