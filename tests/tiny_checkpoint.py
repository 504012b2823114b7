"""A training checkpoint of a tiny classifier, written the way the trainer writes one, for the
command-line tests that load checkpoints.

Imported by test modules in any folder (pytest puts ``tests/`` on ``sys.path`` for its
``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

from internimage.data import IMAGENET_MEAN, IMAGENET_STD
from internimage.train.checkpoint import CHECKPOINT_FORMAT

__all__ = ["save_tiny_classifier"]


def save_tiny_classifier(path: Path, model: torch.nn.Module, *, image_size: int) -> Path:
    """Save ``model`` (an ``internimage_atto`` with depths 1-1-1-1 and 3 classes) as a
    classification checkpoint with classes ``a, b, c`` and ImageNet normalisation."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "task": "classification",
        "model": model.state_dict(),
        "ema": None,
        "config": {"model": {"name": "internimage_atto", "depths": [1, 1, 1, 1]}},
        "model_name": "internimage_atto",
        "classes": ["a", "b", "c"],
        "image_size": image_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    torch.save(payload, path)
    return path
