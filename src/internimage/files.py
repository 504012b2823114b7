"""Atomic file writes: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "process_alive", "remove_stale_temporaries"]

# ".<target name>.<pid of the writer>.<mkstemp's random part>.tmp": the writer's process id tells
# a temporary file that a live process is still writing from one that a killed process left.
_TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same folder (same file system), are flushed to disk,
    and the temporary file then replaces ``path`` with ``os.replace``. On any failure the temporary
    file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        # mkstemp creates the file private (0600); give it the permissions of a normal new file.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 through :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))



def process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this machine (zombies included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write_bytes` left in ``folder`` when its
    process was killed mid-write; returns the deleted paths.

    Only files named by :func:`atomic_write_bytes` whose writing process no longer exists are
    removed, so a write in progress elsewhere is never disturbed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _TEMPORARY_NAME.match(entry.name)
        if match is None or not entry.is_file() or process_alive(int(match["pid"])):
            continue
        try:
            entry.unlink()
        except FileNotFoundError:  # removed by someone else meanwhile
            continue
        removed.append(entry)
    return removed
