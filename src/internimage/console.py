"""How the command line and its worker processes word messages for people: one line each."""

from __future__ import annotations

import warnings

__all__ = [
    "ERROR_PREFIX", "WARNING_PREFIX", "install_warning_format", "one_line", "show_values",
]

ERROR_PREFIX = "internimage: error: "
WARNING_PREFIX = "internimage: warning: "


# How many distinct bad values a message lists: enough to see the pattern (labels 1..150 where
# 0..149 were expected, say), few enough to keep it on one line.
_MAX_VALUES_SHOWN = 5


def show_values(distinct: list[object]) -> str:
    """The first few of the sorted ``distinct`` values (and how many there are), for a message."""
    shown = ", ".join(str(v) for v in distinct[:_MAX_VALUES_SHOWN])
    if len(distinct) > _MAX_VALUES_SHOWN:
        shown += f", ... ({len(distinct)} distinct values)"
    return shown


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (several lines are joined with '; ')."""
    from internimage.errors import UserError

    if isinstance(error, OSError) and not isinstance(error, UserError) and error.strerror:
        # "[Errno 13] Permission denied: 'x'" -> "x: permission denied"
        where = error.filename if error.filename is not None else ""
        text = f"{where}: {error.strerror.lower()}" if where else error.strerror.lower()
    else:
        text = str(error) or type(error).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def install_warning_format() -> None:
    """Print this library's data warnings as ``internimage: warning: <message>``.

    Python's format adds the file and line that issued the warning (inside torch's data
    loader) and that line's source, which mean nothing to someone whose image is unreadable.
    Other warnings keep Python's format.
    """
    from internimage.errors import DataWarning

    python_format = warnings.formatwarning
    if getattr(python_format, "_internimage", False):
        return

    def formatwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        if issubclass(category, DataWarning):
            return f"{WARNING_PREFIX}{message}\n"
        return python_format(message, category, filename, lineno, line)

    formatwarning._internimage = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning
