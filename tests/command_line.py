"""How the tests run the installed ``internimage`` command in a subprocess, and read what a
training run wrote.

Imported by test modules in any folder (pytest puts ``tests/`` on ``sys.path`` for its
``conftest.py``)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["COMMAND", "assert_one_error_line", "run_command", "set_args", "step_losses"]

_SCRIPT = Path(sys.executable).with_name("internimage")
#: The console script of the environment running the tests; the module where it is not installed
#: (an editable checkout run without ``pip install``).
COMMAND = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "internimage.cli.main"]


def set_args(assignments: list[str]) -> list[str]:
    """``["a=1", ...]`` -> ``["--set", "a=1", ...]``."""
    return [arg for assignment in assignments for arg in ("--set", assignment)]


def step_losses(run_dir: Path) -> list[float]:
    """The logged training loss of every step of a run."""
    with (run_dir / "train_steps.csv").open() as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle)]


def run_command(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``internimage ARGS`` in a subprocess, as a user runs it (no terminal on standard input)."""
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL,
    )


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    """``stderr`` is one ``internimage: error:`` line, no traceback, holding every fragment."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("internimage: error: ") and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
