"""Atomic checkpoint files and the random-number state that makes a resumed run exact."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internimage.errors import CheckpointFileError, MissingFileError
from internimage.files import atomic_write_bytes

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_save",
    "atomic_write_bytes",
    "capture_rng_state",
    "load_training_checkpoint",
    "restore_rng_state",
]

#: Value of the ``format`` key of training checkpoints written by this library.
CHECKPOINT_FORMAT = "internimage-train-v1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`.

    Serialisation happens before the file is touched, so an object that fails to serialise
    leaves the previous file in place.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as tensors and primitive containers.

    Everything is loadable with ``torch.load(weights_only=True)``.
    """
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by the trainer (``weights_only=True``: tensors and plain data).

    Args:
        path: The ``.pt`` file, or a run folder (its ``last.pt``).

    Raises:
        MissingFileError: No such file (or the folder has no ``last.pt``).
        CheckpointFileError: The file is unreadable or not a training checkpoint of this library.
    """
    from internimage.models.checkpoint import read_checkpoint

    path = Path(path)
    if path.is_dir():
        if not (path / "last.pt").is_file():
            raise MissingFileError(f"{path} holds no last.pt: it is not a run folder to resume")
        path = path / "last.pt"
    payload = read_checkpoint(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFileError(
            f"{path} is not an internimage training checkpoint (format {CHECKPOINT_FORMAT}); "
            f"plain weights files are loaded with --checkpoint FILE --model NAME"
        )
    return dict(payload)
