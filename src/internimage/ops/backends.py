"""Choice of the DCNv3 backend: automatic by device, or forced by environment or context."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "available_backends",
    "resolve_backend",
    "use_backend",
]

#: Every backend the library knows, in order of preference.
BACKENDS = ("triton", "numba", "reference")
#: Environment variable that forces a backend (``auto`` or unset: choose by device).
ENV_VAR = "INTERNIMAGE_DCNV3_BACKEND"

# Set by use_backend(); a plain module global so that torch.compile can guard on it.
_forced: str | None = None


# Looked up once at import (find_spec does not import the package): torch.compile traces
# resolve_backend(), and some torch versions refuse to trace importlib.util.find_spec.
_INSTALLED = {name: importlib.util.find_spec(name) is not None for name in ("triton", "numba")}


def _has_module(name: str) -> bool:
    return _INSTALLED[name]


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends() -> list[str]:
    """Backends usable in this process.

    ``reference`` always; ``numba`` when numba is installed (CPU tensors); ``triton`` when Triton is
    installed and either a CUDA device is present or ``TRITON_INTERPRET=1`` (CPU tensors, slow,
    for testing).
    """
    names = []
    if _has_module("triton") and (torch.cuda.is_available() or _triton_interpreted()):
        names.append("triton")
    if _has_module("numba"):
        names.append("numba")
    names.append("reference")
    return names


def _check_name(name: str, source: str) -> str:
    name = name.strip().lower()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(
            f"unknown DCNv3 backend {name!r} from {source}; choose one of "
            f"{', '.join(('auto',) + BACKENDS)}"
        )
    return name


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a DCNv3 backend inside a ``with`` block (``"auto"`` restores the automatic choice).

    It takes precedence over the ``INTERNIMAGE_DCNV3_BACKEND`` environment variable. The setting is
    process-wide, not per thread.

    Example:
        >>> with use_backend("reference"):
        ...     y = dcnv3(x, offset, mask, group=4)
    """
    global _forced
    name = _check_name(name, "use_backend()")
    previous = _forced
    _forced = name
    try:
        yield
    finally:
        _forced = previous


def resolve_backend(device: torch.device) -> str:
    """Backend that computes a call on ``device``.

    Raises:
        RuntimeError: A forced backend cannot run on this device or is not installed.
    """
    requested = _forced
    source = "use_backend()"
    if requested is None or requested == "auto":
        env = os.environ.get(ENV_VAR)
        if env and requested is None:
            requested, source = _check_name(env, ENV_VAR), ENV_VAR
    if requested is None or requested == "auto":
        if device.type == "cuda" and _has_module("triton"):
            return "triton"
        if device.type == "cpu" and _has_module("numba"):
            return "numba"
        return "reference"
    if requested == "reference":
        return requested
    if requested not in available_backends():
        raise RuntimeError(
            f"DCNv3 backend {requested!r} (from {source}) is not available here; available: "
            f"{', '.join(available_backends())}"
        )
    if requested == "numba" and device.type != "cpu":
        raise RuntimeError(f"DCNv3 backend 'numba' (from {source}) runs on CPU tensors only, "
                           f"got a tensor on {device}")
    if requested == "triton" and device.type != "cuda" and not (
        device.type == "cpu" and _triton_interpreted()
    ):
        raise RuntimeError(
            f"DCNv3 backend 'triton' (from {source}) needs CUDA tensors (or CPU tensors with "
            f"TRITON_INTERPRET=1), got a tensor on {device}"
        )
    return requested
